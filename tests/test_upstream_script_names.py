"""Upstream's and the release's script names and variables: scripts/merge_lora_weights.py, CKPT, IMAGE_FOLDER."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.model.tiny import build_tiny_llava

REPO = Path(__file__).resolve().parents[1]
# Stands in for python: logs each call's arguments and writes the file named by --output-file.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
while [ $# -gt 0 ]; do
    if [ "$1" = "--output-file" ]; then echo '{}' > "$2"; fi
    shift
done
"""


@pytest.fixture
def gqa(tmp_path) -> dict:
    eval_dir = tmp_path / "eval"
    (eval_dir / "gqa/data/images").mkdir(parents=True)
    (eval_dir / "gqa/llava_gqa_testdev_balanced.jsonl").write_text("{}\n")
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {**os.environ, "EVAL_DIR": str(eval_dir), "PYTHON": str(fake), "FAKE_LOG": str(tmp_path / "log"),
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    env.pop("IMAGE_FOLDER", None)
    return {"env": env, "eval_dir": eval_dir, "log": tmp_path / "log", "cwd": tmp_path}


def _gqa(gqa: dict, **extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    proc = subprocess.run(["bash", str(REPO / "scripts_visatb/eval/gqa.sh")], cwd=gqa["cwd"], capture_output=True,
                          text=True, env={**gqa["env"], **extra}, timeout=60)  # fmt: skip
    calls = gqa["log"].read_text().splitlines() if gqa["log"].exists() else []
    return proc, calls


def _arg(call: str, flag: str) -> str:
    words = call.split()
    return words[words.index(flag) + 1]


def test_ckpt_as_a_name_under_checkpoints_as_the_release_reads_it(gqa):
    (gqa["cwd"] / "checkpoints/visatb-7b").mkdir(parents=True)
    proc, calls = _gqa(gqa, CKPT="visatb-7b")
    assert proc.returncode == 0, proc.stderr
    assert _arg(calls[0], "--model-path") == "./checkpoints/visatb-7b"
    assert "/answers/llava_gqa_testdev_balanced/visatb-7b/" in _arg(calls[0], "--answers-file")
    assert "using ./checkpoints/visatb-7b" in proc.stdout


@pytest.mark.parametrize("ckpt", ["liuhaotian/llava-v1.5-7b", "ABS"])
def test_ckpt_as_a_path_or_hub_name_is_passed_as_it_is(gqa, ckpt):
    if ckpt == "ABS":
        ckpt = str(gqa["cwd"] / "models" / "mine")
        Path(ckpt).mkdir(parents=True)
    proc, calls = _gqa(gqa, CKPT=ckpt)
    assert proc.returncode == 0, proc.stderr
    assert _arg(calls[0], "--model-path") == ckpt and "checkpoints" not in proc.stdout


def test_gqa_honours_image_folder(gqa, tmp_path):
    images = tmp_path / "gqa_images"
    images.mkdir()
    proc, calls = _gqa(gqa, IMAGE_FOLDER=str(images))
    assert proc.returncode == 0, proc.stderr
    assert _arg(calls[0], "--image-folder") == str(images)
    proc, calls = _gqa(gqa, IMAGE_FOLDER=str(tmp_path / "missing"))
    assert proc.returncode == 1 and f"GQA image folder {tmp_path / 'missing'} not found" in proc.stderr
    _, default_calls = _gqa({**gqa, "log": tmp_path / "log2"}, FAKE_LOG=str(tmp_path / "log2"))
    assert _arg(default_calls[0], "--image-folder") == str(gqa["eval_dir"] / "gqa/data/images")


@pytest.mark.slow
def test_upstream_path_of_merge_lora_weights(tmp_path):
    written = build_tiny_llava(tmp_path, kind="lora")
    merged = tmp_path / "llava-tiny-merged"
    proc = subprocess.run([sys.executable, "scripts/merge_lora_weights.py", "--model-path", written["lora"],
                           "--model-base", written["base"], "--save-model-path", str(merged)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _, model, _, _ = load_pretrained_model(str(merged), None, "llava-tiny-merged", device="cpu", verbose=False)
    state = model.state_dict()
    for key, value in written["reference_state"].items():
        if "vision_tower" not in key:
            torch.testing.assert_close(state[key], value, msg=key)
    proc = subprocess.run([sys.executable, "scripts/merge_lora_weights.py", "--model-path", str(tmp_path / "base"),
                           "--model-base", written["base"], "--save-model-path", str(tmp_path / "x")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "not a LoRA checkpoint" in proc.stderr
