"""Benchmark generation (model_vqa_loader, model_vqa, model_vqa_science, model_vqa_mmbench) on the tiny checkpoint.

Each module runs end to end on a few questions in its benchmark's real format; the records, the prompts
the model saw, chunking + merge, resuming and batch invariance are checked, and one benchmark script
runs on a tiny POPE fixture.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava.answers import benchmark_answers
from llava.answers.jsonio import read_jsonl
from llava.conversation import get_conv_template
from llava.eval import (
    merge_chunks,
    model_vqa,
    model_vqa_loader,
    model_vqa_mmbench,
    model_vqa_science,
)
from llava.generation import LlavaGenerator
from llava.mm_utils import expand2square, processor_fill_color

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "llava-tiny"
SHORTUUID_ALPHABET = set("23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
SQA_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LLAVA_FIELDS = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
MMBENCH_FIELDS = ["question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id", "model_id", "metadata"]


# Generation runs on the lively checkpoint of tests/conftest.py with one torch thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reference(lively_checkpoint) -> LlavaGenerator:
    """A separately loaded generator answering one question at a time: the expected answers."""
    return LlavaGenerator.from_pretrained(lively_checkpoint, conv_mode="vicuna_v1", max_new_tokens=3, verbose=False)


@pytest.fixture(scope="module")
def cropped_reference(reference) -> LlavaGenerator:
    """The reference with the processor's own resize + centre crop (upstream's model_vqa/model_vqa_science)."""
    return LlavaGenerator(reference.tokenizer, reference.model, reference.image_processor, conv_mode="vicuna_v1",
                          max_new_tokens=3, image_aspect_ratio="square")  # fmt: skip


class ModelSpy:
    """Loads each distinct model set-up once (tests stay fast), counts loads, and records every prompt."""

    cache: dict[str, LlavaGenerator] = {}

    def __init__(self, monkeypatch):
        self.loads, self.prompts, self.pixels = 0, [], []
        load, prepare = LlavaGenerator.from_pretrained, LlavaGenerator.prepare_prompts

        def from_pretrained(*args, **kwargs):
            self.loads += 1
            key = repr((args, sorted(kwargs.items())))
            if key not in self.cache:
                self.cache[key] = load(*args, **kwargs)
            generator = self.cache[key]
            # A cached generator takes the preprocessing a fresh load would get now (see image_preprocessing).
            generator.image_aspect_ratio = LlavaGenerator(
                generator.tokenizer, generator.model, generator.image_processor
            ).image_aspect_ratio
            return generator

        def prepare_prompts(generator, prompts, images):
            self.prompts.extend(prompts)
            batch = prepare(generator, prompts, images)
            if batch.images is not None:
                self.pixels.extend(batch.images)
            return batch

        monkeypatch.setattr(LlavaGenerator, "from_pretrained", from_pretrained)
        monkeypatch.setattr(LlavaGenerator, "prepare_prompts", prepare_prompts)


@pytest.fixture
def spy(monkeypatch) -> ModelSpy:
    return ModelSpy(monkeypatch)


def picture(i: int) -> Image.Image:
    """A distinct image per index: other colour, other size (padded to a square by the processor)."""
    return Image.new("RGB", (24 + 5 * i, 32 - 2 * i), ((70 * i) % 256, 120, 250 - 30 * i))


def vicuna_prompt(user_message: str) -> str:
    """The vicuna_v1 prompt LLaVA builds for one user message, rendered by hand."""
    conv = get_conv_template("vicuna_v1")
    conv.append_message(conv.roles[0], user_message)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


VQA_TEXTS = [
    "What is the colour of the bus?\nAnswer the question using a single word or phrase.",
    "How many people are there?\nAnswer the question using a single word or phrase.",
    "Is there a dog in the image?",
    "what is written on the sign?\nAnswer the question using a single word or phrase.",
    "Where is the cat?",
    "Which brand is shown?\nAnswer the question using a single word or phrase.",
    "Is this a zoo?",
]


def write_vqa(folder: Path, question_ids: list) -> tuple[Path, Path]:
    """A jsonl question file in LLaVA's format (as for VQAv2/GQA/TextVQA/POPE) and its image folder."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i, qid in enumerate(question_ids):
        picture(i).save(images / f"COCO_{i:03d}.png")
        records.append({"question_id": qid, "image": f"COCO_{i:03d}.png", "text": VQA_TEXTS[i], "category": "default"})
    return write_jsonl(folder / "questions.jsonl", records), images


def loader_args(checkpoint, question_file, images, answers, *extra) -> list[str]:
    return [
        "--model-path", checkpoint, "--question-file", str(question_file), "--image-folder", str(images),
        "--answers-file", str(answers), "--temperature", "0", "--conv-mode", "vicuna_v1", "--max_new_tokens", "3",
        *map(str, extra),
    ]  # fmt: skip


def check_answer_ids(records: list[dict]) -> None:
    ids = [r["answer_id"] for r in records]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 22 and set(i) <= SHORTUUID_ALPHABET for i in ids)


# ---------------------------------------------------------------- model_vqa_loader / model_vqa


def test_loader_writes_one_llava_record_per_question(tmp_path, lively_checkpoint, spy, reference, capsys):
    question_ids = [101, "q-2", 103, 104, 105]
    questions, images = write_vqa(tmp_path, question_ids)
    answers = tmp_path / "answers" / "llava-tiny.jsonl"
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, answers, "--batch-size", 2)) == 0
    seen = list(spy.prompts)

    records = read_jsonl(answers)
    expected_texts = [reference.generate([VQA_TEXTS[i]], [picture(i)])[0] for i in range(5)]
    assert len(set(expected_texts)) > 2  # answers depend on the question, so order mistakes show
    for i, record in enumerate(records):
        assert list(record) == LLAVA_FIELDS
        assert record["question_id"] == question_ids[i]  # as written, int or string
        assert record["prompt"] == VQA_TEXTS[i]  # the question text (TextVQA/MME match answers by it)
        assert record["text"] == expected_texts[i]
        assert record["model_id"] == MODEL_ID and record["metadata"] == {}
    assert len(records) == 5
    check_answer_ids(records)
    # The model saw LLaVA's prompt: the image first, then the question, in the vicuna_v1 template.
    assert seen == [vicuna_prompt("<image>\n" + VQA_TEXTS[i]) for i in range(5)]
    assert capsys.readouterr().out.strip() == f"{answers}: 5 answered, 5 in all"


def test_model_vqa_answers_the_same_format_with_long_answer_defaults(tmp_path, lively_checkpoint, spy, cropped_reference):
    defaults = {name: module.build_parser().parse_args(["--model-path", "m", "--question-file", "q", "--answers-file", "a"])
                for name, module in [("loader", model_vqa_loader), ("vqa", model_vqa), ("sqa", model_vqa_science),
                                     ("mmb", model_vqa_mmbench)]}  # fmt: skip
    assert (defaults["loader"].max_new_tokens, defaults["loader"].temperature, defaults["loader"].conv_mode) == (128, 0.2, "llava_v1")
    assert (defaults["vqa"].max_new_tokens, defaults["vqa"].temperature, defaults["vqa"].conv_mode) == (1024, 0.2, "llava_v1")
    assert (defaults["sqa"].max_new_tokens, defaults["sqa"].conv_mode) == (1024, "llava_v0")
    assert (defaults["mmb"].max_new_tokens, defaults["mmb"].conv_mode, defaults["mmb"].lang) == (1024, "llava_v1", "en")
    assert all(args.batch_size == 8 and args.num_chunks == 1 and args.chunk_idx == 0 for args in defaults.values())

    # LLaVA-Bench's question format: question_id, image, text, category.
    questions, images = write_vqa(tmp_path, [0, 1])
    answers = tmp_path / "llavabench.jsonl"
    assert model_vqa.main(loader_args(lively_checkpoint, questions, images, answers)) == 0
    records = read_jsonl(answers)
    assert [list(r) for r in records] == [LLAVA_FIELDS] * 2
    assert [r["text"] for r in records] == [cropped_reference.generate([VQA_TEXTS[i]], [picture(i)])[0] for i in range(2)]
    assert [r["prompt"] for r in records] == VQA_TEXTS[:2]


def test_model_vqa_and_science_centre_crop_but_the_loader_pads(tmp_path, lively_checkpoint, spy, reference):
    # Upstream's model_vqa and model_vqa_science call image_processor.preprocess (resize + centre crop);
    # model_vqa_loader goes through process_images, which pads for this pad checkpoint.
    processor = reference.image_processor
    assert reference.model.config.image_aspect_ratio == "pad"
    cropped = [processor.preprocess(picture(i), return_tensors="pt")["pixel_values"][0] for i in range(2)]
    padded = [
        processor.preprocess(expand2square(picture(i), processor_fill_color(processor)), return_tensors="pt")[
            "pixel_values"
        ][0]
        for i in range(2)
    ]
    assert not torch.allclose(cropped[0], padded[0])  # the pictures are not square, so the two differ

    questions, images = write_vqa(tmp_path, [0, 1])
    assert model_vqa.main(loader_args(lively_checkpoint, questions, images, tmp_path / "vqa.jsonl")) == 0
    assert len(spy.pixels) == 2 and all(torch.equal(a, b) for a, b in zip(spy.pixels, cropped))

    spy.pixels.clear()
    problems = [{"id": f"p{i}", "image": f"COCO_{i:03d}.png", "conversations": [{"from": "human", "value": "<image>\nWhich?"}]}
                for i in range(2)]  # fmt: skip
    (tmp_path / "sqa.json").write_text(json.dumps(problems))
    assert model_vqa_science.main(loader_args(lively_checkpoint, tmp_path / "sqa.json", images, tmp_path / "sqa.jsonl")) == 0
    assert len(spy.pixels) == 2 and all(torch.equal(a, b) for a, b in zip(spy.pixels, cropped))

    spy.pixels.clear()
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, tmp_path / "loader.jsonl")) == 0
    assert len(spy.pixels) == 2 and all(torch.equal(a, b) for a, b in zip(spy.pixels, padded))


def test_flags_take_both_spellings():
    args = model_vqa_loader.build_parser().parse_args(
        ["--model_path", "m", "--question_file", "q", "--answers_file", "a", "--top-p", "0.5", "--num-beams", "2",
         "--max-new-tokens", "7", "--batch_size", "3", "--num_chunks", "2", "--chunk_idx", "1"]
    )  # fmt: skip
    assert (args.model_path, args.top_p, args.num_beams, args.max_new_tokens, args.batch_size) == ("m", 0.5, 2, 7, 3)
    assert (args.num_chunks, args.chunk_idx) == (2, 1)


# ---------------------------------------------------------------- ScienceQA


def write_science(folder: Path) -> tuple[Path, Path]:
    """LLaVA's llava_test_CQM-A.json format: image problems (with <image> where LLaVA puts it) and a text-only one."""
    images = folder / "images" / "test"
    problems = [
        {"id": "4", "image": "4/image.png", "conversations": [
            {"from": "human", "value": "<image>\nContext: A cat sits on a mat.\nWhich animal is shown?\nA. cat\nB. dog"},
            {"from": "gpt", "value": "A"}]},
        {"id": "7", "conversations": [
            {"from": "human", "value": "Context: N/A\nWhich word comes first in a dictionary?\nA. lamp\nB. apple"},
            {"from": "gpt", "value": "B"}]},
        {"id": "12", "image": "12/image.png", "conversations": [
            {"from": "human", "value": "Context: The map shows states.\nWhat is the capital of Utah?\nA. Salt Lake City\nB. Denver\nC. Boise\n<image>"},
            {"from": "gpt", "value": "A"}]},
    ]  # fmt: skip
    for i, problem in enumerate(problems):
        if "image" in problem:
            (images / problem["image"]).parent.mkdir(parents=True, exist_ok=True)
            picture(i).save(images / problem["image"])
    path = folder / "llava_test_CQM-A.json"
    path.write_text(json.dumps(problems), encoding="utf-8")
    return path, images


SCIENCE_QUESTIONS = [
    "Context: A cat sits on a mat.\nWhich animal is shown?\nA. cat\nB. dog",
    "Context: N/A\nWhich word comes first in a dictionary?\nA. lamp\nB. apple",
    "Context: The map shows states.\nWhat is the capital of Utah?\nA. Salt Lake City\nB. Denver\nC. Boise",
]
SCIENCE_IMAGES = [picture(0), None, picture(2)]


@pytest.mark.parametrize("single_pred", [True, False])
def test_science_prompts_follow_upstream(tmp_path, lively_checkpoint, spy, cropped_reference, single_pred):
    questions, images = write_science(tmp_path)
    answers = tmp_path / "sqa.jsonl"
    extra = ["--single-pred-prompt"] if single_pred else []
    assert model_vqa_science.main(loader_args(lively_checkpoint, questions, images, answers, *extra)) == 0

    suffix = "\n" + SQA_INSTRUCTION if single_pred else ""
    asked = [q + suffix for q in SCIENCE_QUESTIONS]
    records = read_jsonl(answers)
    assert [list(r) for r in records] == [LLAVA_FIELDS] * 3
    assert [r["question_id"] for r in records] == ["4", "7", "12"]
    # `prompt` as upstream records it: "<image>\n" on image problems only, the instruction last.
    assert [r["prompt"] for r in records] == ["<image>\n" + asked[0], asked[1], "<image>\n" + asked[2]]
    # The model saw the image first (wherever <image> was in the question) and no image for text-only.
    assert spy.prompts == [vicuna_prompt("<image>\n" + asked[0]), vicuna_prompt(asked[1]), vicuna_prompt("<image>\n" + asked[2])]
    expected = [cropped_reference.generate([q], [img])[0] for q, img in zip(asked, SCIENCE_IMAGES)]
    assert [r["text"] for r in records] == expected
    check_answer_ids(records)


# ---------------------------------------------------------------- MMBench


MMBENCH_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category", "comment", "split"]


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_mmbench(path: Path, image_cells: list[str] | None = None) -> Path:
    """An MMBench tsv: row 0 with a hint and four options, row 1 without hint ('nan') and with two options."""
    cells = image_cells or [png_base64(picture(0)), png_base64(picture(1))]
    rows = [
        ["0", "Which animal is in the picture?", "Look at the left side.", "cat", "dog", "bird", "fish", "A", "attribute", cells[0], "src", "l2", "nan", "dev"],
        ["25", "图中的天气如何？", "nan", "晴天", "雨天", "", "", "B", "scene", cells[1], "src", "l2", "nan", "dev"],
    ]  # fmt: skip
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(MMBENCH_HEADER)
        writer.writerows(rows)
    return path


def mmbench_args(checkpoint: str, question_file: Path, answers: Path, *extra) -> list[str]:
    return [
        "--model-path", checkpoint, "--question-file", str(question_file), "--answers-file", str(answers),
        "--temperature", "0", "--conv-mode", "vicuna_v1", "--max_new_tokens", "3", "--single-pred-prompt", *map(str, extra),
    ]  # fmt: skip


def test_mmbench_all_rounds_rotate_the_options(tmp_path, lively_checkpoint, spy, reference):
    tsv = write_mmbench(tmp_path / "mmbench_dev_20230712.tsv")
    answers = tmp_path / "answers" / "1_0.jsonl"
    assert model_vqa_mmbench.main(mmbench_args(lively_checkpoint, tsv, answers, "--all-rounds", "--lang", "en", "--batch-size", 4)) == 0

    records = read_jsonl(answers)
    assert [list(r) for r in records] == [MMBENCH_FIELDS] * 6
    assert [(r["question_id"], r["round_id"]) for r in records] == [(0, 0), (0, 1), (0, 2), (0, 3), (25, 0), (25, 1)]
    hint_question = "Look at the left side.\nWhich animal is in the picture?"
    assert records[0]["prompt"] == hint_question + "\nA. cat\nB. dog\nC. bird\nD. fish"
    assert records[1]["prompt"] == hint_question + "\nA. dog\nB. bird\nC. fish\nD. cat"
    assert (records[1]["options"], records[1]["option_char"]) == (["dog", "bird", "fish", "cat"], ["B", "C", "D", "A"])
    assert (records[3]["options"], records[3]["option_char"]) == (["fish", "cat", "dog", "bird"], ["D", "A", "B", "C"])
    # No hint ('nan') and only two options (C, D empty): two rounds.
    assert [r["prompt"] for r in records[4:]] == ["图中的天气如何？\nA. 晴天\nB. 雨天", "图中的天气如何？\nA. 雨天\nB. 晴天"]
    assert [(r["options"], r["option_char"]) for r in records[4:]] == [(["晴天", "雨天"], ["A", "B"]), (["雨天", "晴天"], ["B", "A"])]

    asked = [r["prompt"] + "\n" + SQA_INSTRUCTION for r in records]
    assert spy.prompts == [vicuna_prompt("<image>\n" + q) for q in asked]
    images = [picture(0)] * 4 + [picture(1)] * 2
    assert [r["text"] for r in records] == [reference.generate([q], [img])[0] for q, img in zip(asked, images)]
    check_answer_ids(records)
    # The merge keeps every round, in question order.
    merged = merge_chunks.merge_chunks(tsv, answers.parent, 1)
    assert [(r["question_id"], r["round_id"]) for r in merged] == [(r["question_id"], r["round_id"]) for r in records]


def test_mmbench_cn_asks_in_chinese_once_per_question(tmp_path, lively_checkpoint, spy):
    tsv = write_mmbench(tmp_path / "mmbench_dev_cn_20231003.tsv")
    answers = tmp_path / "cn.jsonl"
    assert model_vqa_mmbench.main(mmbench_args(lively_checkpoint, tsv, answers, "--lang", "cn")) == 0
    records = read_jsonl(answers)
    assert [(r["question_id"], r["round_id"]) for r in records] == [(0, 0), (25, 0)]
    assert [r["prompt"] for r in records][1] == "图中的天气如何？\nA. 晴天\nB. 雨天"
    assert spy.prompts == [vicuna_prompt("<image>\n" + r["prompt"] + "\n请直接回答选项字母。") for r in records]
    assert "图中的天气如何？" in answers.read_text(encoding="utf-8")  # written readable, not as \u escapes


# ---------------------------------------------------------------- chunks, resume, batches


def test_chunks_then_merge_equal_one_run(tmp_path, lively_checkpoint, spy):
    # TextVQA-style repeated question ids (image ids): each occurrence is its own question.
    question_ids = [5, 5, 6, 7, 7, 8, 9]
    questions, images = write_vqa(tmp_path, question_ids)
    whole = tmp_path / "whole.jsonl"
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, whole, "--batch-size", 3)) == 0
    for k in range(3):
        chunk = benchmark_answers.chunk_path(tmp_path / "chunks", 3, k)
        assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, chunk, "--num-chunks", 3, "--chunk-idx", k)) == 0
    assert [len(read_jsonl(benchmark_answers.chunk_path(tmp_path / "chunks", 3, k))) for k in range(3)] == [3, 2, 2]
    merged = merge_chunks.merge_chunks(questions, tmp_path / "chunks", 3, tmp_path / "merge.jsonl")
    fields = ("question_id", "prompt", "text")
    assert [tuple(r[f] for f in fields) for r in merged] == [tuple(r[f] for f in fields) for r in read_jsonl(whole)]
    assert [r["prompt"] for r in merged] == VQA_TEXTS


def test_resume_after_a_crash_mid_line_answers_each_question_once(tmp_path, lively_checkpoint, spy):
    questions, images = write_vqa(tmp_path, [5, 5, 6, 7, 7, 8, 9])
    answers = tmp_path / "a.jsonl"
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, answers, "--batch-size", 2)) == 0
    complete = read_jsonl(answers)
    lines = answers.read_text().splitlines(keepends=True)
    # The writer died while writing the fifth answer: four whole lines, half of the fifth.
    answers.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    spy.loads = 0

    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, answers, "--batch-size", 2)) == 0
    resumed = read_jsonl(answers)
    assert spy.loads == 1
    assert [(r["question_id"], r["prompt"], r["text"]) for r in resumed] == [
        (r["question_id"], r["prompt"], r["text"]) for r in complete
    ]
    # The four whole answers were kept, not redone; the cut one and the rest are new.
    assert [r["answer_id"] for r in resumed[:4]] == [r["answer_id"] for r in complete[:4]]
    assert not {r["answer_id"] for r in resumed[4:]} & {r["answer_id"] for r in complete}
    # The merge accepts the resumed file as a one-chunk run.


def test_an_interrupted_run_keeps_its_finished_batches(tmp_path, lively_checkpoint, spy, monkeypatch):
    questions, images = write_vqa(tmp_path, list(range(7)))
    answers = tmp_path / "chunks" / "1_0.jsonl"
    generate, calls = LlavaGenerator.generate_prepared, []

    def failing_third_batch(generator, batch, streamer=None):
        calls.append(len(batch.prompts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return generate(generator, batch, streamer)

    monkeypatch.setattr(LlavaGenerator, "generate_prepared", failing_third_batch)
    with pytest.raises(KeyboardInterrupt):
        model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, answers, "--batch-size", 2))
    assert [r["question_id"] for r in read_jsonl(answers)] == [0, 1, 2, 3]

    monkeypatch.setattr(LlavaGenerator, "generate_prepared", generate)
    asked_before = len(spy.prompts)
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, answers, "--batch-size", 2)) == 0
    merged = merge_chunks.merge_chunks(questions, answers.parent, 1)
    assert [r["question_id"] for r in merged] == list(range(7))
    # Only the three unanswered questions were asked the second time.
    assert spy.prompts[asked_before:] == [vicuna_prompt("<image>\n" + VQA_TEXTS[i]) for i in (4, 5, 6)]


def test_a_complete_file_is_not_redone_and_the_model_not_loaded(tmp_path, lively_checkpoint, spy, capsys):
    questions, images = write_vqa(tmp_path, [1, 2, 3])
    answers = tmp_path / "a.jsonl"
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, answers)) == 0
    before = answers.read_text()
    spy.loads = 0
    capsys.readouterr()
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, answers)) == 0
    assert spy.loads == 0 and answers.read_text() == before
    assert capsys.readouterr().out.strip() == f"{answers}: 0 answered, 3 answered before, 3 in all"


def test_an_empty_chunk_leaves_an_empty_file(tmp_path, lively_checkpoint, spy):
    questions, images = write_vqa(tmp_path, [1, 2])
    chunk = benchmark_answers.chunk_path(tmp_path / "chunks", 3, 2)
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, chunk, "--num-chunks", 3, "--chunk-idx", 2)) == 0
    assert chunk.read_text() == "" and spy.loads == 0


def test_batch_size_one_and_four_give_identical_answers(tmp_path, lively_checkpoint, spy):
    questions, images = write_vqa(tmp_path, list(range(7)))
    runs = {}
    for batch_size in (1, 4):
        answers = tmp_path / f"b{batch_size}.jsonl"
        assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, answers, "--batch-size", batch_size)) == 0
        runs[batch_size] = [r["text"] for r in read_jsonl(answers)]
    assert len(set(runs[1])) > 3
    assert runs[1] == runs[4]

    # ScienceQA mixes text-only and image problems in one batch.
    sqa, sqa_images = write_science(tmp_path / "sqa")
    for batch_size in (1, 4):
        answers = tmp_path / f"s{batch_size}.jsonl"
        assert model_vqa_science.main(loader_args(lively_checkpoint, sqa, sqa_images, answers, "--batch-size", batch_size)) == 0
        runs[batch_size] = [r["text"] for r in read_jsonl(answers)]
    assert runs[1] == runs[4]


# ---------------------------------------------------------------- errors


def test_a_missing_image_is_named_before_the_model_loads(tmp_path, lively_checkpoint, spy, capsys):
    questions, images = write_vqa(tmp_path, [11, "q-12", 13])
    (images / "COCO_001.png").unlink()
    code = model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, tmp_path / "a.jsonl"))
    err = capsys.readouterr().err
    assert code == 1 and spy.loads == 0
    assert err == (
        f"error: image file not found: {images / 'COCO_001.png'} ({questions}: question 2 (question_id 'q-12')); "
        "1 of 3 images to answer are missing: check --image-folder\n"
    )


def test_unreadable_images_are_named(tmp_path, lively_checkpoint, spy, capsys):
    questions, images = write_vqa(tmp_path, [1, 2])
    (images / "COCO_001.png").write_bytes(b"not a png")
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, tmp_path / "a.jsonl", "--batch-size", 1)) == 1
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert err.startswith(f"error: {questions}: question 2 (question_id 2): cannot open image file {images / 'COCO_001.png'}")
    assert [r["question_id"] for r in read_jsonl(tmp_path / "a.jsonl")] == [1]  # the first batch was kept

    tsv = write_mmbench(tmp_path / "mmb.tsv", ["@@not base64@@", png_base64(picture(1))])
    assert model_vqa_mmbench.main(mmbench_args(lively_checkpoint, tsv, tmp_path / "m.jsonl")) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"error: {tsv}: row 1 (index 0): cannot decode its base64 image")


def test_bad_question_records_are_named(tmp_path, lively_checkpoint, spy, capsys):
    images = tmp_path
    bad_loader = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "image": "a.png", "text": "t"}, {"question_id": 2, "image": "b.png"}])
    assert model_vqa_loader.main(loader_args(lively_checkpoint, bad_loader, images, tmp_path / "a.jsonl")) == 1
    assert capsys.readouterr().err == f"error: {bad_loader}: question 2 (question_id 2): 'text' must be a string\n"

    bad_sqa = tmp_path / "sqa.json"
    bad_sqa.write_text(json.dumps([{"id": "3", "conversations": []}]))
    assert model_vqa_science.main(loader_args(lively_checkpoint, bad_sqa, images, tmp_path / "s.jsonl")) == 1
    assert capsys.readouterr().err.startswith(f"error: {bad_sqa}: problem 1 (id '3'): 'conversations' must be a list")

    tsv = tmp_path / "mmb.tsv"
    tsv.write_text("index\tquestion\tA\tB\n0\tq?\tyes\tno\n", encoding="utf-8")
    assert model_vqa_mmbench.main(mmbench_args(lively_checkpoint, tsv, tmp_path / "m.jsonl")) == 1
    assert capsys.readouterr().err == f"error: {tsv}: no image column(s) (columns: index, question, A, B)\n"
    tsv.write_text("index\tquestion\timage\tA\tB\n0\tq?\tx\tyes\tnan\n", encoding="utf-8")
    assert model_vqa_mmbench.main(mmbench_args(lively_checkpoint, tsv, tmp_path / "m.jsonl")) == 1
    assert capsys.readouterr().err == f"error: {tsv}: row 1 (index 0) has fewer than two options (A, B)\n"
    assert spy.loads == 0


def test_answers_of_other_questions_or_another_model_are_refused(tmp_path, lively_checkpoint, spy, capsys):
    questions, images = write_vqa(tmp_path, [1, 2, 3])
    answers = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "prompt": "p", "text": "x", "model_id": "llava-v1.5-13b"}])
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, answers)) == 1
    assert capsys.readouterr().err == (
        f"error: {answers}: line 1 was written by model 'llava-v1.5-13b', this run's model is 'llava-tiny'; "
        "delete it to start over\n"
    )
    # Chunk 1 of 2 asks questions 3 only (of 1, 2 | 3): an answer to question 1 belongs to another chunk.
    write_jsonl(answers, [{"question_id": 1, "prompt": "p", "text": "x", "model_id": MODEL_ID}])
    assert model_vqa_loader.main(loader_args(lively_checkpoint, questions, images, answers, "--num-chunks", 2, "--chunk-idx", 1)) == 1
    assert "line 1 answers question_id '1', which this run's questions do not ask" in capsys.readouterr().err
    assert spy.loads == 0


def test_bad_flags_exit_with_status_2(tmp_path, lively_checkpoint, capsys):
    questions, images = write_vqa(tmp_path, [1])
    for extra, message in [
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--num-chunks", "2", "--chunk-idx", "2"], "chunk index 2 is out of range for 2 chunks"),
        (["--lang", "fr"], "invalid choice: 'fr'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            model_vqa_mmbench.main(loader_args(lively_checkpoint, questions, images, tmp_path / "a.jsonl", *extra))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_answer_ids_are_shortuuid_like_and_distinct():
    ids = [benchmark_answers.new_answer_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(len(i) == 22 and set(i) <= SHORTUUID_ALPHABET for i in ids)


# ---------------------------------------------------------------- a benchmark script end to end


POPE_SPLITS = {
    # split: [(question_id, image index, object, label)]
    "adversarial": [(1, 0, "dog", "yes"), (2, 1, "car", "no"), (3, 2, "chair", "no")],
    "popular": [(4, 3, "person", "yes"), (5, 4, "cup", "no")],
    "random": [(6, 5, "bus", "yes"), (7, 6, "tree", "yes"), (8, 0, "kite", "no")],
}


def write_pope(eval_dir: Path) -> Path:
    """LLaVA's POPE layout: pope/llava_pope_test.jsonl, pope/coco/coco_pope_<split>.json, pope/val2014/."""
    pope = eval_dir / "pope"
    (pope / "val2014").mkdir(parents=True)
    for i in range(7):
        picture(i).save(pope / "val2014" / f"COCO_val2014_{i:012d}.jpg", format="PNG")
    questions = []
    for split, rows in POPE_SPLITS.items():
        labels = []
        for qid, image, thing, label in rows:
            record = {"question_id": qid, "image": f"COCO_val2014_{image:012d}.jpg", "text": f"Is there a {thing} in the image?"}
            labels.append({**record, "label": label})
            questions.append({**record, "category": split})
        write_jsonl(pope / "coco" / f"coco_pope_{split}.json", labels)
    return write_jsonl(pope / "llava_pope_test.jsonl", questions)


def pope_prediction(text: str) -> str:
    """LLaVA's POPE rule: 'no' if the first sentence holds the word no/No/not, else 'yes'."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if {"no", "No", "not"} & set(words) else "yes"


@pytest.mark.slow
@pytest.mark.e2e
def test_pope_script_end_to_end_on_two_processes(tmp_path, lively_checkpoint):
    questions = write_pope(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "MODEL_NAME", "BATCH_SIZE")}
    # Two "GPUs" on a machine without CUDA: two CPU processes, one chunk each, then the merge.
    env.update(CKPT=lively_checkpoint, EVAL_DIR=str(tmp_path), PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="0,1",
               BATCH_SIZE="3", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # fmt: skip
    proc = subprocess.run(
        ["bash", str(REPO / "scripts_visatb" / "eval" / "pope.sh")], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    answers_dir = tmp_path / "pope" / "answers"
    assert sorted(p.name for p in (answers_dir / MODEL_ID).glob("*.jsonl")) == ["2_0.jsonl", "2_1.jsonl"]
    merged = read_jsonl(answers_dir / f"{MODEL_ID}.jsonl")
    assert [r["question_id"] for r in merged] == [q["question_id"] for q in read_jsonl(questions)]
    assert all(list(r) == LLAVA_FIELDS and r["model_id"] == MODEL_ID for r in merged)

    # The printed table: one row per split (TP FP TN FN then acc, precision, recall, F1, yes-ratio in %).
    text_by_id = {r["question_id"]: r["text"] for r in merged}
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.split()}
    for split, items in POPE_SPLITS.items():
        pairs = [(pope_prediction(text_by_id[qid]), label) for qid, _, _, label in items]
        tp = sum(p == "yes" == g for p, g in pairs)
        fp = sum(p == "yes" != g for p, g in pairs)
        tn = sum(p == "no" == g for p, g in pairs)
        fn = sum(p == "no" != g for p, g in pairs)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        expected = [100 * (tp + tn) / len(pairs), 100 * precision, 100 * recall, 100 * f1, 100 * (tp + fp) / len(pairs)]
        assert [int(v) for v in rows[split][:4]] == [tp, fp, tn, fn]
        assert [float(v) for v in rows[split][4:]] == pytest.approx(expected, abs=0.005)
    result = json.loads((answers_dir / f"{MODEL_ID}_result.json").read_text())
    assert set(result) == {"adversarial", "popular", "random", "average"}
