"""inference_visatb.py and its workflow: chunks, merge, resume, skip/overwrite rules, naming, the chat CLIs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from llava.answers import validation_answers as inference
from llava.answers.engine import split_chunks
from llava.answers.validation_answers import InferenceJob, merge_chunks, run_inference
from llava.generation import LlavaGenerator, open_image
from llava.mm_utils import get_model_name_from_path

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "llava-tiny"


def load_cli_module():
    spec = importlib.util.spec_from_file_location("inference_visatb", REPO / "inference_visatb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator(lively_checkpoint) -> LlavaGenerator:
    return LlavaGenerator.from_pretrained(lively_checkpoint, max_new_tokens=4, verbose=False)


def write_questions(folder: Path, n: int = 11) -> tuple[Path, Path]:
    """n records, every third one text-only, with distinct images; returns (question file, image folder)."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        record = {"id": f"q{i}", "task": "GQA", "conversations": [
            {"from": "human", "value": f"<image>\nWhat is shown in picture {i}?" if i % 3 else f"Say {i} words."},
            {"from": "gpt", "value": f"answer {i}"},
        ]}  # fmt: skip
        if i % 3:
            Image.new("RGB", (24 + 3 * i, 32), (25 * i % 256, 90, 200 - 10 * i)).save(images / f"{i}.png")
            record["image"] = f"{i}.png"
        records.append(record)
    question_file = folder / "GQA_val-11.json"
    question_file.write_text(json.dumps(records))
    return question_file, images


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    return write_questions(tmp_path)


# The settings of the `generator` fixture, known to the job without loading the model.
SETTINGS = {"conv_mode": "vicuna_v1", "temperature": 0.0, "top_p": None, "num_beams": 1, "max_new_tokens": 4}


def make_job(data, answers: Path, **kwargs) -> InferenceJob:
    question_file, images = data
    settings = dict(batch_size=3, progress=False, settings=SETTINGS)
    settings.update(kwargs)
    return InferenceJob(str(question_file), str(answers), MODEL_NAME, image_folder=str(images), **settings)


class Loader:
    """Hands out the shared generator and counts how often the model would have been loaded."""

    def __init__(self, generator):
        self.generator, self.calls = generator, 0

    def __call__(self):
        self.calls += 1
        return self.generator


def read(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("n_items", "n_chunks", "sizes"),
    [(9, 4, [3, 2, 2, 2]), (10, 3, [4, 3, 3]), (2, 5, [1, 1, 0, 0, 0]), (0, 2, [0, 0]), (7, 1, [7])],
)
def test_chunks_are_balanced_and_cover_everything_once(n_items, n_chunks, sizes):
    items = list(range(n_items))
    chunks = [split_chunks(items, n_chunks, k) for k in range(n_chunks)]
    assert [len(c) for c in chunks] == sizes
    assert [x for c in chunks for x in c] == items


def test_chunk_arguments_are_checked():
    with pytest.raises(ValueError, match="chunk index 4 is out of range for 4 chunks"):
        split_chunks(list(range(9)), 4, 4)
    with pytest.raises(ValueError, match="at least 1"):
        split_chunks([1], 0, 0)


def test_output_names_follow_the_release():
    assert inference.answers_file_name("data/GQA_val-1k.json", "llava-v1.5-7b_mini") == "GQA-val-1k_llava-v1.5-7b-mini.json"
    assert inference.answers_file_name("GQA_val.json", "llava-tiny", 4, 2) == "GQA-val_llava-tiny_2-4.json"
    model = get_model_name_from_path("runs/task_GQA/checkpoint-500")
    assert inference.answers_file_name("x/VQAv2_val-2k.json", model) == "VQAv2-val-2k_task-GQA-checkpoint-500.json"
    assert inference.answers_path("out", "a_b.json", "m", 3, 1) == Path("out/tmp/a-b_m_1-3.json")
    assert inference.answers_path("out", "a_b.json", "m") == Path("out/a-b_m.json")


def test_a_run_writes_the_records_with_answer_and_generator(data, tmp_path, generator):
    report = run_inference(make_job(data, tmp_path / "answers"), Loader(generator))
    out = tmp_path / "answers" / "GQA-val-11_llava-tiny.json"
    assert report.answers_file == out and report.answered == 11 and report.status == "answered"
    questions, answers = read(data[0]), read(out)
    for question, answer in zip(questions, answers, strict=True):
        expected = json.loads(json.dumps(question))
        expected["conversations"][1]["generative_value"] = answer["conversations"][1]["generative_value"]
        expected["generator"] = MODEL_NAME
        assert answer == expected
    generated = [a["conversations"][1]["generative_value"] for a in answers]
    assert len(set(generated)) > 8
    image = open_image(data[1] / "1.png")
    assert generated[1] == generator.generate([questions[1]["conversations"][0]["value"]], [image])[0]
    assert generated[0] == generator.generate(["Say 0 words."], [None])[0]
    assert not (tmp_path / "answers" / "tmp").exists() or not any((tmp_path / "answers" / "tmp").iterdir())


def test_chunks_then_merge_equal_one_run(data, tmp_path, generator):
    whole = run_inference(make_job(data, tmp_path / "one", batch_size=4), Loader(generator))
    reports = {}
    for k in [2, 0, 3, 1]:  # finishing order must not matter
        reports[k] = run_inference(make_job(data, tmp_path / "four", num_chunks=4, chunk_idx=k, batch_size=2), Loader(generator))
    assert [r.total for _, r in sorted(reports.items())] == [3, 3, 3, 2]
    assert reports[1].merged_file == tmp_path / "four" / "GQA-val-11_llava-tiny.json"
    assert all(reports[k].merged_file is None for k in (2, 0, 3))
    assert read(reports[1].merged_file) == read(whole.answers_file)
    assert (tmp_path / "four" / "tmp" / "GQA-val-11_llava-tiny_3-4.json").is_file()

    again = merge_chunks(data[0], tmp_path / "four", MODEL_NAME, 4, overwrite=True)
    assert again.status == "merged" and read(again.answers_file) == read(whole.answers_file)


def test_a_killed_run_resumes_to_the_same_file(data, tmp_path, generator, monkeypatch):
    reference = read(run_inference(make_job(data, tmp_path / "clean"), Loader(generator)).answers_file)
    real_generate = generator.generate_prepared
    calls = []

    def crash_on_third_batch(batch):
        calls.append(batch.prompts)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real_generate(batch)

    monkeypatch.setattr(generator, "generate_prepared", crash_on_third_batch)
    job = make_job(data, tmp_path / "answers", save_every=1)
    with pytest.raises(RuntimeError, match="killed"):
        run_inference(job, Loader(generator))
    assert not job.answers_file.exists()
    partial = tmp_path / "answers" / "tmp" / "GQA-val-11_llava-tiny.partial.json"
    assert read(partial)["next"] == 6 and len(read(partial)["answers"]) == 6

    calls.clear()
    (data[1] / "1.png").unlink()  # record 1 is answered already: only the rest needs its images
    monkeypatch.setattr(generator, "generate_prepared", lambda batch: calls.append(batch.prompts) or real_generate(batch))
    report = run_inference(job, Loader(generator))
    prompts = [generator.build_prompt(r["conversations"][0]["value"], "image" in r) for r in read(data[0])]
    assert [p for batch in calls for p in batch] == prompts[6:]  # nothing answered twice, nothing dropped
    assert report.resumed == 6 and report.answered == 5
    assert read(job.answers_file) == reference
    assert not partial.exists()


def test_an_interrupted_run_keeps_its_finished_batches(data, tmp_path, generator, monkeypatch):
    real_generate = generator.generate_prepared
    calls = []

    def interrupt_on_third_batch(batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_generate(batch)

    monkeypatch.setattr(generator, "generate_prepared", interrupt_on_third_batch)
    job = make_job(data, tmp_path / "answers", save_every=100)
    with pytest.raises(KeyboardInterrupt):
        run_inference(job, Loader(generator))
    state = read(tmp_path / "answers" / "tmp" / "GQA-val-11_llava-tiny.partial.json")
    assert state["next"] == 6 and [a["id"] for a in state["answers"]] == [f"q{i}" for i in range(6)]


def test_progress_is_not_continued_with_other_settings_or_questions(data, tmp_path, generator, monkeypatch):
    real_generate = generator.generate_prepared
    calls = []

    def crash_on_second_batch(batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real_generate(batch)

    monkeypatch.setattr(generator, "generate_prepared", crash_on_second_batch)
    job = make_job(data, tmp_path / "answers", save_every=1)
    with pytest.raises(RuntimeError):
        run_inference(job, Loader(generator))
    longer = LlavaGenerator(generator.tokenizer, generator.model, generator.image_processor, max_new_tokens=5)
    with pytest.raises(ValueError, match=r"setting max_new_tokens \(4 then, 5 now\).* rerun with --overwrite"):
        run_inference(make_job(data, tmp_path / "answers", save_every=1, settings=longer.settings), Loader(longer))

    changed = read(data[0])
    changed[1]["conversations"][0]["value"] = "<image>\nA different question?"
    data[0].write_text(json.dumps(changed))
    loader = Loader(generator)
    with pytest.raises(ValueError, match=r"progress file .* was written with other inputs: the question file's content"):
        run_inference(job, loader)
    assert loader.calls == 0


def test_a_finished_file_is_not_recomputed_unless_overwrite(data, tmp_path, generator, monkeypatch):
    job = make_job(data, tmp_path / "answers")
    first = read(run_inference(job, Loader(generator)).answers_file)

    def must_not_run(batch):
        raise AssertionError("the model was run for a finished file")

    monkeypatch.setattr(generator, "generate_prepared", must_not_run)
    loader = Loader(generator)
    report = run_inference(job, loader)
    assert report.status == "already complete" and loader.calls == 0
    assert "pass --overwrite" in inference.format_report(report)

    monkeypatch.undo()
    calls = []
    real_generate = generator.generate_prepared
    monkeypatch.setattr(generator, "generate_prepared", lambda batch: calls.append(len(batch.prompts)) or real_generate(batch))
    job.overwrite = True
    report = run_inference(job, Loader(generator))
    assert report.status == "answered" and sum(calls) == 11
    assert read(job.answers_file) == first


def test_a_missing_image_is_an_error_naming_the_file(data, tmp_path, generator):
    (data[1] / "4.png").unlink()
    loader = Loader(generator)
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*4\.png \(record 4 \(id 'q4'\).*1 of 11"):
        run_inference(make_job(data, tmp_path / "answers"), loader)
    assert loader.calls == 0  # found before loading the model
    assert not (tmp_path / "answers" / "GQA-val-11_llava-tiny.json").exists()


def test_an_unreadable_image_is_an_error_naming_the_file(data, tmp_path, generator):
    (data[1] / "5.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"record 5 \(id 'q5'\).*cannot open image file .*5\.png"):
        run_inference(make_job(data, tmp_path / "answers"), Loader(generator))
    report = run_inference(make_job(data, tmp_path / "answers", skip_missing_images=True), Loader(generator))
    assert [(s["id"], s["reason"].split(":")[0]) for s in report.skipped] == [("q5", "unreadable")]


def test_skip_missing_images_counts_and_lists_them(data, tmp_path, generator, capsys):
    complete = read(run_inference(make_job(data, tmp_path / "all"), Loader(generator)).answers_file)
    for name in ("2.png", "7.png"):
        (data[1] / name).unlink()
    report = run_inference(make_job(data, tmp_path / "answers", skip_missing_images=True), Loader(generator))
    assert "2 of 11 images to answer are missing" in capsys.readouterr().err
    assert [s["id"] for s in report.skipped] == ["q2", "q7"]
    listed = read(tmp_path / "answers" / "tmp" / "GQA-val-11_llava-tiny.skipped.json")
    assert listed == [
        {"index": 2, "id": "q2", "image": str(data[1] / "2.png"), "reason": "missing"},
        {"index": 7, "id": "q7", "image": str(data[1] / "7.png"), "reason": "missing"},
    ]
    answers = read(report.answers_file)
    assert answers == [r for r in complete if r["id"] not in ("q2", "q7")]  # never a black image
    assert "skipped 2 records" in inference.format_report(report)

    for k in range(3):
        chunked = run_inference(
            make_job(data, tmp_path / "chunks", num_chunks=3, chunk_idx=k, skip_missing_images=True), Loader(generator)
        )
    assert read(chunked.merged_file) == answers
    assert read(tmp_path / "chunks" / "tmp" / "GQA-val-11_llava-tiny.skipped.json") == listed


def test_merge_names_a_missing_or_incomplete_chunk(data, tmp_path, generator, monkeypatch):
    answers = tmp_path / "answers"
    run_inference(make_job(data, answers, num_chunks=3, chunk_idx=0), Loader(generator))
    with pytest.raises(FileNotFoundError, match=r"chunk 1 of 3 \(.*GQA-val-11_llava-tiny_1-3\.json\) is missing"):
        merge_chunks(data[0], answers, MODEL_NAME, 3)

    real_generate = generator.generate_prepared

    def crash_at_record_6(batch):
        if any("Say 6 words." in prompt for prompt in batch.prompts):
            raise RuntimeError("killed")
        return real_generate(batch)

    monkeypatch.setattr(generator, "generate_prepared", crash_at_record_6)
    with pytest.raises(RuntimeError):
        run_inference(make_job(data, answers, num_chunks=3, chunk_idx=1, batch_size=2, save_every=1), Loader(generator))
    with pytest.raises(ValueError, match=r"chunk 1 of 3 .* is incomplete: 2 of 4 questions done; rerun .*--chunk-idx 1"):
        merge_chunks(data[0], answers, MODEL_NAME, 3)

    monkeypatch.undo()
    run_inference(make_job(data, answers, num_chunks=3, chunk_idx=1), Loader(generator))
    report = run_inference(make_job(data, answers, num_chunks=3, chunk_idx=2), Loader(generator))
    assert report.merged_file is not None
    chunk_file = answers / "tmp" / "GQA-val-11_llava-tiny_2-3.json"
    chunk_file.write_text(json.dumps(read(chunk_file)[:-1]))
    with pytest.raises(ValueError, match=r"chunk 2 of 3 \(.*_2-3\.json\) is incomplete: 2 answers .* for 3 questions"):
        merge_chunks(data[0], answers, MODEL_NAME, 3, overwrite=True)


def test_question_file_errors_name_the_record(tmp_path, generator):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([
        {"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "q"}]},
    ]))  # fmt: skip
    with pytest.raises(ValueError, match=r"bad\.json: record 1 \(id 'b'\): 'conversations' must be a list"):
        inference.load_questions(bad)
    bad.write_text(json.dumps({"id": "a"}))
    with pytest.raises(ValueError, match="expected a JSON list of records, found dict"):
        inference.load_questions(bad)
    with pytest.raises(ValueError, match="--batch-size must be at least 1"):
        InferenceJob(str(bad), str(tmp_path), MODEL_NAME, batch_size=0)


RELEASE_FLAGS = [
    "model-path", "model-base", "image-folder", "question-file", "answers-folder", "conv-mode", "num-chunks",
    "chunk-idx", "temperature", "top_p", "num_beams", "max_new_tokens", "batch-size", "save-every",
]  # fmt: skip


def test_every_flag_takes_both_spellings():
    parser = load_cli_module().build_parser()
    values = ["m", "b", "i", "q.json", "a", "llava_v1", "4", "2", "0.5", "0.9", "3", "7", "16", "5"]
    switches = ["merge", "overwrite", "skip-missing-images"]
    hyphen = [x for f, v in zip(RELEASE_FLAGS, values) for x in (f"--{f.replace('_', '-')}", v)]
    underscore = [x for f, v in zip(RELEASE_FLAGS, values) for x in (f"--{f.replace('-', '_')}", v)]
    as_hyphen = parser.parse_args(hyphen + [f"--{s}" for s in switches])
    as_underscore = parser.parse_args(underscore + [f"--{s.replace('-', '_')}" for s in switches])
    assert vars(as_hyphen) == vars(as_underscore)
    assert (as_hyphen.top_p, as_hyphen.max_new_tokens, as_hyphen.batch_size) == (0.9, [7], 16)
    assert as_hyphen.question_file == ["q.json"]
    defaults = parser.parse_args(["--model-path", "m", "--question-file", "q", "--answers-folder", "a"])
    assert (defaults.conv_mode, defaults.temperature, defaults.num_chunks, defaults.batch_size) == ("vicuna_v1", 0.0, 1, 8)


def test_merge_flag_joins_chunks_and_names_a_missing_one(data, tmp_path, generator, capsys):
    cli = load_cli_module()
    answers = tmp_path / "answers"
    base = ["--model-path", f"ckpt/{MODEL_NAME}", "--question-file", str(data[0]), "--answers-folder", str(answers)]
    run_inference(make_job(data, answers, num_chunks=2, chunk_idx=0), Loader(generator))
    assert cli.main(base + ["--num-chunks", "2", "--merge"]) == 1
    assert capsys.readouterr().err.startswith("error: chunk 1 of 2 (")
    chunk1 = run_inference(make_job(data, answers, num_chunks=2, chunk_idx=1), Loader(generator))
    (answers / "GQA-val-11_llava-tiny.json").unlink()  # merged automatically; merge again by hand
    assert cli.main(base + ["--num_chunks", "2", "--merge"]) == 0
    assert "Merged chunks into" in capsys.readouterr().out
    assert read(answers / "GQA-val-11_llava-tiny.json") == read(chunk1.merged_file)


def run_script(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, input=stdin, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_end_to_end_with_the_seed_spelling(data, tmp_path, lively_checkpoint, generator):
    expected = read(run_inference(make_job(data, tmp_path / "in_process"), Loader(generator)).answers_file)
    question_file, images = data
    answers = tmp_path / "answers"
    args = ["--model_path", lively_checkpoint, "--image_folder", str(images), "--question_file", str(question_file),
            "--answers-folder", str(answers), "--max_new_tokens", "4", "--batch_size", "4", "--quiet"]  # fmt: skip
    proc = run_script(["inference_visatb.py", *args])
    assert proc.returncode == 0, proc.stderr
    out = answers / "GQA-val-11_llava-tiny.json"
    assert f"Saved inference results to {out} (11 answered)" in proc.stdout
    assert read(out) == expected


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_answers_several_question_files_with_one_model_load(data, tmp_path, lively_checkpoint, generator):
    question_file, images = data
    second = question_file.with_name("RefCOCO-bbox_val-11.json")
    second.write_text(question_file.read_text())
    short = LlavaGenerator(generator.tokenizer, generator.model, generator.image_processor, max_new_tokens=2)
    expected_short = read(run_inference(make_job((second, images), tmp_path / "ref", settings=short.settings), Loader(short)).answers_file)
    expected_long = read(run_inference(make_job(data, tmp_path / "ref"), Loader(generator)).answers_file)
    answers = tmp_path / "answers"
    args = ["--model-path", lively_checkpoint, "--image-folder", str(images), "--question-file", str(question_file),
            str(second), "--answers-folder", str(answers), "--max_new_tokens", "4", "2", "--quiet"]  # fmt: skip
    proc = run_script(["inference_visatb.py", *args])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Saved inference results to") == 2
    # One limit per file: the second file's answers are the 2-token ones, the first file's the 4-token ones.
    assert read(answers / "GQA-val-11_llava-tiny.json") == expected_long
    assert read(answers / "RefCOCO-bbox-val-11_llava-tiny.json") == expected_short
    bad = run_script(["inference_visatb.py", *args[:-4], "--max_new_tokens", "4", "2", "3"])
    assert bad.returncode == 2 and "one value or one per question file (2), got 3" in bad.stderr


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_reports_a_missing_image_in_one_line(data, tmp_path, lively_checkpoint):
    (data[1] / "1.png").unlink()
    args = ["--model-path", lively_checkpoint, "--image-folder", str(data[1]), "--question-file", str(data[0]),
            "--answers-folder", str(tmp_path / "answers")]  # fmt: skip
    proc = run_script(["inference_visatb.py", *args])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: image file not found: {data[1] / '1.png'}")


@pytest.mark.slow
@pytest.mark.e2e
def test_run_llava_answers_one_query(tmp_path, lively_checkpoint, generator):
    picture = tmp_path / "picture.png"
    Image.new("RGB", (30, 20), (200, 30, 60)).save(picture)
    query = "What is in the image?"
    # llava-tiny has no "v1" in its name, so LLaVA's rule picks llava_v0 when --conv-mode is not given.
    v0 = LlavaGenerator(generator.tokenizer, generator.model, generator.image_processor, conv_mode="llava_v0", max_new_tokens=6)
    expected = v0.generate([query], [open_image(str(picture))])[0]
    assert expected
    proc = run_script(["-m", "llava.eval.run_llava", "--model-path", lively_checkpoint, "--image-file", str(picture),
                       "--query", query, "--temperature", "0", "--max_new_tokens", "6"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith(expected + "\n")


@pytest.mark.slow
@pytest.mark.e2e
def test_serve_cli_chats_until_end_of_input(tmp_path, lively_checkpoint, generator):
    picture = tmp_path / "picture.png"
    Image.new("RGB", (30, 20), (20, 130, 60)).save(picture)
    question = "What colour is it?"
    v1 = LlavaGenerator(generator.tokenizer, generator.model, generator.image_processor, max_new_tokens=6)
    expected = v1.generate([question], [open_image(str(picture))])[0]
    assert expected
    proc = run_script(["-m", "llava.serve.cli", "--model-path", lively_checkpoint, "--image-file", str(picture),
                       "--conv-mode", "vicuna_v1", "--temperature", "0", "--max-new-tokens", "6"],
                      stdin=question + "\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"USER: ASSISTANT: {expected}" in proc.stdout
    assert proc.stdout.endswith("USER: \nexit...\n")
