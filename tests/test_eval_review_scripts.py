"""The release's two-step GPT-judged scripts: llavacoco.sh (answers only), llavacoco_review.sh and
llavabench_review.sh (review + summary), against the tiny checkpoint and a local fake judge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_gpt_review import SCORES, FakeJudge, bench_fixture

from llava.answers.jsonio import read_jsonl

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts_visatb" / "eval"
MODEL = "llava-tiny"


def script_env(eval_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "MODEL_NAME", "BATCH_SIZE", "OPENAI_API_KEY", "OPENAI_BASE_URL")
           and not k.lower().endswith("_proxy")}  # fmt: skip
    env.update(EVAL_DIR=str(eval_dir), PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)  # fmt: skip
    return env


def run(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True, text=True, env=env, timeout=300)


def fixture_files(eval_dir: Path) -> dict[str, Path]:
    """The review test's LLaVA-Bench files (4 questions, 2 images, GPT-4 and model answers)."""
    (eval_dir / "fixture").mkdir(parents=True, exist_ok=True)
    return bench_fixture(eval_dir / "fixture")


def coco_layout(eval_dir: Path) -> Path:
    """LLaVA-Bench COCO's files (questions, contexts, GPT-4 answers) made from the review test's fixture."""
    files = fixture_files(eval_dir)
    coco = eval_dir / "llava-bench-coco"
    (coco / "images").mkdir(parents=True)
    shutil.copy(files["questions"], coco / "qa90_questions.jsonl")
    shutil.copy(files["answers_gpt4"], coco / "qa90_gpt4_answer.jsonl")
    contexts = [{"id": name, "image": f"{name}.jpg", "captions": [f"Picture {name}."],
                 "instances": [{"category": "cat", "bbox": [0.1, 0.2, 0.5, 0.9]}]} for name in ("001", "002")]  # fmt: skip
    (coco / "caps_boxes_coco2014_val_80.jsonl").write_text("".join(json.dumps(c) + "\n" for c in contexts))
    for i, name in enumerate(("001", "002")):
        Image.new("RGB", (30, 20), (60 * i, 120, 200)).save(coco / "images" / f"{name}.jpg")
    return coco


@pytest.mark.slow
@pytest.mark.e2e
def test_llavacoco_only_generates_and_needs_no_key(tmp_path, tiny_llava):
    coco = coco_layout(tmp_path)
    proc = run("llavacoco.sh", script_env(tmp_path, CKPT=tiny_llava["full"]), "--max_new_tokens", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = read_jsonl(coco / "answers" / f"{MODEL}.jsonl")
    questions = read_jsonl(coco / "qa90_questions.jsonl")
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
    assert all(a["model_id"] == MODEL and a["prompt"] == q["text"] for a, q in zip(answers, questions))
    assert not (coco / "reviews").exists()


def fake_answers(files: dict[str, Path], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(files["model"], target)


@pytest.mark.parametrize("script", ["llavacoco_review.sh", "llavabench_review.sh"])
@pytest.mark.slow
@pytest.mark.e2e
def test_review_step_scores_the_answers_and_prints_the_summary(tmp_path, script):
    files = fixture_files(tmp_path)
    if script == "llavacoco_review.sh":
        bench = coco_layout(tmp_path)
    else:
        bench = tmp_path / "llava-bench-in-the-wild"
        bench.mkdir()
        for name in ("questions", "context", "answers_gpt4"):
            shutil.copy(files[name], bench / f"{name}.jsonl")
    fake_answers(files, bench / "answers" / f"{MODEL}.jsonl")
    with FakeJudge(SCORES) as judge:
        env = script_env(tmp_path, CKPT=f"checkpoints/{MODEL}", OPENAI_API_KEY="sk-test-local",
                         OPENAI_BASE_URL=judge.base_url, JUDGE_MODEL="fake-judge-1")  # fmt: skip
        proc = run(script, env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(judge.requests) == 4
        again = run(script, env)  # the reviews are kept: a rerun asks the judge nothing
        assert again.returncode == 0 and len(judge.requests) == 4
    reviews = read_jsonl(bench / "reviews" / f"{MODEL}.jsonl")
    assert [r["tuple"] for r in reviews] == [[8.0, 6.0], [10.0, 5.0], [8.0, 8.0], [6.0, 6.0]]
    # reference mean 8, model mean 6.25 over all four: 78.1% relative (worked out in test_gpt_review.py)
    assert "all 78.1 80.0 62.5 4" in proc.stdout.splitlines()


@pytest.mark.parametrize("script, first", [("llavacoco_review.sh", "llavacoco.sh"),
                                           ("llavabench_review.sh", "llavabench.sh")])  # fmt: skip
def test_review_step_without_answers_says_which_step_to_run_first(tmp_path, script, first):
    files = fixture_files(tmp_path)
    coco_layout(tmp_path)
    bench = tmp_path / "llava-bench-in-the-wild"
    bench.mkdir()
    for name in ("questions", "context", "answers_gpt4"):
        shutil.copy(files[name], bench / f"{name}.jsonl")
    proc = run(script, script_env(tmp_path, CKPT=f"checkpoints/{MODEL}", OPENAI_API_KEY="sk-test-local"))
    assert proc.returncode == 1
    assert f"answers/{MODEL}.jsonl not found or empty: run " in proc.stderr and first in proc.stderr


@pytest.mark.slow
@pytest.mark.e2e
def test_llavabench_skip_review_generates_without_a_key(tmp_path, tiny_llava):
    files = fixture_files(tmp_path)
    bench = tmp_path / "llava-bench-in-the-wild"
    (bench / "images").mkdir(parents=True)
    shutil.copy(files["questions"], bench / "questions.jsonl")
    for i, name in enumerate(("001", "002")):
        Image.new("RGB", (30, 20), (60 * i, 120, 200)).save(bench / "images" / f"{name}.jpg")
    env = script_env(tmp_path, CKPT=tiny_llava["full"], SKIP_REVIEW="1")
    proc = run("llavabench.sh", env, "--max_new_tokens", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_jsonl(bench / "answers" / f"{MODEL}.jsonl")) == 4
    assert not (bench / "reviews").exists()
