"""The eval/*.py metric scripts end to end, run as a user runs them (a subprocess, from any folder)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pycocoevalcap.cider.cider import Cider

REPO = Path(__file__).resolve().parents[1]


def answer(reference, prediction, rid):
    return {
        "id": rid,
        "conversations": [
            {"from": "human", "value": "<image>\nquestion"},
            {"from": "gpt", "value": reference, "generative_value": prediction},
        ],
        "generator": "model",
    }


def run(script, *args, cwd):
    return subprocess.run(
        [sys.executable, str(REPO / "eval" / script), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


QA_ANSWERS = [answer("Yes", "yes.", "a"), answer("2", "two", "b"), answer("red.", "Red", "c")]
BOX_ANSWERS = [
    answer("[0, 0, 10, 10]", "Box: [0, 0, 10, 6].", "a"),
    answer("[0, 0, 10, 10]", "[0, 0, 10, 5]", "b"),
]
CAPTIONS = [("a man riding a horse", "a man on a horse"), ("two cats on a sofa", "two cats sleeping")]


def test_qa_prints_like_the_release_from_another_folder(tmp_path):
    path = write(tmp_path / "answers.json", QA_ANSWERS)
    proc = run("qa.py", "-a", path.name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "2 / 3 = 0.6666666666666666\n"


@pytest.mark.parametrize("script", ["grounding.py", "grounding_bbox.py"])
def test_grounding_json_line(tmp_path, script):
    path = write(tmp_path / "answers.json", BOX_ANSWERS)
    proc = run(script, "--answers-file", path, "--json", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "metric": "iou_accuracy",
        "metric_type": "grounding",
        "score": 0.5,
        "n": 2,
        "correct": 1,
        "answers_file": str(path),
    }


def test_caption_cider_matches_pycocoevalcap(tmp_path):
    path = write(tmp_path / "answers.json", [answer(ref, pred, i) for i, (ref, pred) in enumerate(CAPTIONS)])
    expected, _ = Cider().compute_score(
        {i: [ref] for i, (ref, _) in enumerate(CAPTIONS)}, {i: [pred] for i, (_, pred) in enumerate(CAPTIONS)}
    )
    proc = run("caption.py", "-a", path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"CIDEr:  {float(expected)}\n"


def test_caption_list_records_into_the_scores_table(tmp_path):
    references = [["a man on a horse", "a rider"], ["two cats sleeping", "cats on a couch"]]
    predictions = ["a man on a horse", "two cats"]
    path = write(
        tmp_path / "answers.json", [answer(r, p, i) for i, (r, p) in enumerate(zip(references, predictions))]
    )
    scores = write(tmp_path / "scores.json", {"mini": {"GQA": 0.41}, "GQA": {"GQA": 0.58}})
    proc = run(
        "caption_list.py", "-a", path, "--json", "--scores", scores, "--model-key", "mini", "--task", "RefCOCO-caption",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    expected, _ = Cider().compute_score(
        dict(enumerate(references)), {i: [p] for i, p in enumerate(predictions)}
    )
    assert line["metric"] == "cider" and line["n"] == 2
    assert line["score"] == pytest.approx(float(expected), rel=1e-12)
    assert json.loads(scores.read_text()) == {
        "mini": {"GQA": 0.41, "RefCOCO-caption": line["score"]},
        "GQA": {"GQA": 0.58},
    }


def test_qa_scores_table_created_when_missing(tmp_path):
    path = write(tmp_path / "answers.json", QA_ANSWERS)
    scores = tmp_path / "out" / "scores.json"
    proc = run("qa.py", "-a", path, "--scores", scores, "--model_key", "GQA", "--task", "GQA", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "2 / 3 = 0.6666666666666666\n"
    assert json.loads(scores.read_text()) == {"GQA": {"GQA": 2 / 3}}


def test_recording_flags_come_together(tmp_path):
    path = write(tmp_path / "answers.json", QA_ANSWERS)
    proc = run("qa.py", "-a", path, "--scores", tmp_path / "s.json", "--task", "GQA", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "error: --scores, --task also needs --model-key\n"
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize(
    "script, content, message",
    [
        ("qa.py", None, "no such file"),
        ("qa.py", {"a": 1}, "expected a JSON list"),
        ("grounding.py", [], "the answer list is empty"),
        (
            "qa.py",
            [answer("yes", "yes", "a"), {"id": "b", "conversations": [{}, {"value": "no"}]}],
            "record 1 (id 'b'): conversations[1] has no 'generative_value'",
        ),
        (
            "caption_list.py",
            [answer("a cat", "a cat", "a")],
            "record 0 (id 'a'): conversations[1].value must be",
        ),
        (
            "caption.py",
            [answer(["a cat"], "a cat", "a")],
            "record 0 (id 'a'): conversations[1].value must be",
        ),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, script, content, message):
    path = tmp_path / "answers.json"
    if content is not None:
        write(path, content)
    proc = run(script, "-a", path, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"error: {path}") and proc.stderr.count("\n") == 1
    assert message in proc.stderr
