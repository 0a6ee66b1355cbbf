"""Samples that model_max_length cuts short or masks entirely are counted per task and reported."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from train_helpers import TASKS, make_toy_data, train_flags, write_projector
from transformers import AutoTokenizer, CLIPImageProcessor

from llava.conversation import get_conv_template
from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, scan_data
from llava.train.llava_trainer import truncation_summary
from llava.train.train import train

KEPT, CUT, MASKED = 0, 1, 2


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("toy_truncation"))


def dataset_for(tiny_llava, toy, max_length: int, image_tokens: int, records=None, tmp_path=None):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava["base"], use_fast=False, model_max_length=max_length)
    tokenizer.pad_token = tokenizer.unk_token
    data = toy["data"]
    if records is not None:
        data = tmp_path / "data.json"
        data.write_text(json.dumps(records))
    args = SimpleNamespace(image_folder=toy["images"], image_aspect_ratio="pad", is_multimodal=True,
                           image_processor=CLIPImageProcessor.from_pretrained(tiny_llava["vision_tower"]),
                           mm_use_im_start_end=False, image_token_count=image_tokens)  # fmt: skip
    return LazySupervisedDataset(scan_data(data, toy["images"], TASKS), tokenizer, get_conv_template("v1"), args)


def text_record(rid: str, question_words: int, answer: str = "four five six") -> dict:
    return {"id": rid, "task": "Text", "conversations": [
        {"from": "human", "value": " ".join(["word"] * question_words)}, {"from": "gpt", "value": answer}]}  # fmt: skip


def test_samples_say_whether_truncation_cut_or_masked_their_targets(tiny_llava, toy, tmp_path, capsys):
    records = [text_record("short", 2), text_record("long", 400)]
    dataset = dataset_for(tiny_llava, toy, 160, 16, records, tmp_path)
    assert [dataset[i]["truncation"] for i in range(2)] == [KEPT, MASKED]
    assert "record 1 (id 'long')" in capsys.readouterr().err
    full = [dataset_for(tiny_llava, toy, 512, 16)[i]["truncation"] for i in range(5)]
    assert full == [KEPT] * 5
    # 160 positions: an image's 300 push every image sample's answer out.
    short = dataset_for(tiny_llava, toy, 160, 300)
    codes = {short.records[i]["id"]: short[i]["truncation"] for i in range(len(short))}
    assert codes["color-0"] == MASKED and codes["caption-1"] == MASKED
    batch = DataCollatorForSupervisedDataset(short.tokenizer)([short[0], short[1]])
    assert batch["truncated_samples"].tolist() == [codes[short.records[0]["id"]], codes[short.records[1]["id"]]]


def test_the_summary_counts_per_task_and_warns_above_a_few_percent():
    counts = torch.tensor([[100, 0, 1], [50, 3, 10], [10, 0, 0]])
    lines = truncation_summary(counts, ["A", "B", "C"], max_length=2048)
    text = "\n".join(lines)
    assert "A: 1 of 100 sample(s) (1.0%) fully masked" in text
    assert "B: 10 of 50 sample(s) (20.0%) fully masked, 3 cut short" in text
    assert "C" not in text
    assert [line for line in lines if line.startswith("WARNING")] == [
        "WARNING: task B lost 20.0% of its samples to truncation (model_max_length 2048): raise "
        "--model_max_length or shorten those samples"]  # fmt: skip
    assert truncation_summary(torch.zeros(3, 3, dtype=torch.long), ["A", "B", "C"], 2048) == []


def test_training_reports_what_truncation_dropped(tiny_llava, toy, tmp_path, capsys):
    tiny = {**tiny_llava, "projector": write_projector(tiny_llava["reference_state"], tmp_path / "p" / "mm_projector.bin")}
    flags = train_flags(tiny, toy, tmp_path / "run", "--max_steps", "1", "--save_strategy", "no")
    flags[flags.index("--model_max_length") + 1] = "40"
    train(args=flags)
    err = capsys.readouterr().err
    assert "WARNING: task ColorQA lost 100.0% of its samples to truncation (model_max_length 40)" in err
    assert "ColorQA: 3 of 3 sample(s) (100.0%) fully masked" in err
