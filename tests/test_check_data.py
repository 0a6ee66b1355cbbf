"""The data check: every kind of problem is found, counted and named; clean data passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from llava.visatb.check_data import (
    BAD_CONVERSATION,
    IMAGE_TOKEN,
    MISSING_IMAGE,
    MISSING_TASK,
    NOT_A_RECORD,
    UNKNOWN_TASK,
    check_records,
    main,
)

REPO = Path(__file__).resolve().parents[1]


def record(rid, task="A", image="a.jpg", question="<image>\nWhat colour?", answer="red"):
    r = {
        "id": rid,
        "task": task,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }
    if image is not None:
        r["image"] = image
    return r


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 6), (200, 10, 10)).save(folder / "a.jpg")
    Image.new("RGB", (6, 8), (10, 10, 200)).save(folder / "sub" / "b.jpg")
    return folder


def clean_records():
    return [
        record("r0"),
        record("r1", task="B", image="sub/b.jpg"),
        record("r2", task="B", image=None, question="Say hi."),  # text-only
        {
            "id": "r3",
            "task": "A",
            "image": "a.jpg",
            "conversations": [
                {"from": "human", "value": "What is it?\n<image>"},
                {"from": "gpt", "value": "a cat"},
                {"from": "human", "value": "Colour?"},
                {"from": "gpt", "value": "black"},
            ],
        },
    ]


def test_clean_data_passes(images):
    report = check_records(clean_records(), images, ["A", "B"])
    assert report.ok, report.format()
    assert report.task_counts == {"A": 2, "B": 2}
    assert report.total == 4
    assert "OK: no problems found" in report.format()


def test_every_kind_of_problem_is_found(images):
    records = clean_records() + [
        record("no-task", task=None),
        record("odd-task", task="Z"),
        {"id": "gpt-first", "task": "A", "image": "a.jpg",
         "conversations": [{"from": "gpt", "value": "<image>\nhi"}, {"from": "human", "value": "x"}]},
        {"id": "dangling", "task": "A", "conversations": [{"from": "human", "value": "q"}]},
        {"id": "no-conv", "task": "A"},
        record("no-token", question="What colour?"),
        record("token-no-image", image=None),
        record("two-tokens", question="<image>\n<image>\nWhat?"),
        record("lost", image="missing/c.jpg"),
        ["not", "a", "record"],
    ]  # fmt: skip
    report = check_records(records, images, ["A", "B"])
    problems = report.problems
    assert not report.ok
    assert problems[MISSING_TASK].count == 1 and "'no-task'" in problems[MISSING_TASK].examples[0]
    assert problems[UNKNOWN_TASK].examples == ["record 5 (id 'odd-task'): task 'Z'"]
    assert problems[BAD_CONVERSATION].count == 3
    text = "\n".join(problems[BAD_CONVERSATION].examples)
    assert "'gpt-first'): ends with a human turn" in text  # what is left once its first (gpt) turn is dropped
    assert "'dangling'): ends with a human turn" in text
    assert "'no-conv'): no 'conversations' list" in text
    assert problems[IMAGE_TOKEN].count == 3
    text = "\n".join(problems[IMAGE_TOKEN].examples)
    assert "'no-token'): has an image but no <image> in the first human turn" in text
    assert "'token-no-image'): <image> appears 1 time(s) but the record has no image" in text
    assert "'two-tokens'): <image> appears 2 times for 1 image(s)" in text
    assert problems[MISSING_IMAGE].count == 1 and problems[MISSING_IMAGE].examples[0].endswith(
        "missing/c.jpg"
    )
    assert problems[NOT_A_RECORD].examples == ["record 13 is a list"]
    assert report.error_count == 1 + 1 + 3 + 3 + 1 + 1
    assert report.task_counts["Z"] == 1 and report.task_counts["(no task)"] == 1
    formatted = report.format()
    assert "FAILED: 10 problem(s)" in formatted and "(not in the task list)" in formatted


def test_a_first_turn_from_gpt_is_dropped_and_counted_not_rejected(images):
    # Upstream LLaVA's preprocessing drops a leading gpt turn (ShareGPT has such records); so does training.
    greeting = {"from": "gpt", "value": "Hello! How can I help?"}
    records = clean_records() + [
        {"id": "sharegpt", "task": "A", "conversations": [greeting, {"from": "human", "value": "Hi"},
                                                           {"from": "gpt", "value": "Hi!"}]},
        {"id": "with-image", "task": "B", "image": "a.jpg",
         "conversations": [greeting, {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "a cat"}]},
        {"id": "only-gpt", "task": "A", "conversations": [greeting]},
        {"id": "two-gpt", "task": "A", "conversations": [greeting, greeting, {"from": "human", "value": "x"}]},
    ]  # fmt: skip
    report = check_records(records, images, ["A", "B"])
    assert report.dropped_first_turns.count == 2
    assert report.dropped_first_turns.examples == ["record 4 (id 'sharegpt')", "record 5 (id 'with-image')"]
    bad = "\n".join(report.problems[BAD_CONVERSATION].examples)
    assert report.problems[BAD_CONVERSATION].count == 2 and report.error_count == 2
    assert "'only-gpt'): has only a gpt turn" in bad
    assert "'two-gpt'): turn 1 is from 'gpt', expected 'human'" in bad
    assert "first turn from gpt, dropped before training as LLaVA does (not an error): 2" in report.format()
    assert check_records(records[:6], images, ["A", "B"]).ok


def test_long_lists_are_cut_at_twenty_but_counted(images):
    records = [record(f"r{k}", image=f"gone/{k}.jpg") for k in range(25)]
    report = check_records(records, images, None)
    assert report.problems[MISSING_IMAGE].count == 25
    assert len(report.problems[MISSING_IMAGE].examples) == 20
    assert "... and 5 more" in report.format()


def test_reference_lists_are_accepted_only_when_asked(images):
    records = [record("v0", answer=["a red square", "red block"])]
    assert check_records(records, images, None).problems[BAD_CONVERSATION].count == 1
    assert check_records(records, images, None, allow_reference_lists=True).ok


def test_without_image_folder_files_are_not_checked():
    report = check_records([record("r0", image="anywhere.jpg")], None, None)
    assert report.ok and "image files not checked" in report.format()


def test_cli_exit_codes(tmp_path, images, capsys):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(clean_records()))
    assert main(["--data", str(data), "--image-folder", str(images), "--tasks", "A,B"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["--data", str(data), "--image-folder", str(images), "--tasks", "A"]) == 1
    assert "task 'B'" in capsys.readouterr().out
    assert main(["--data", str(tmp_path / "none.json"), "--image-folder", str(images)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    data.write_text('{"not": "a list"}')
    assert main(["--data", str(data), "--image-folder", str(images)]) == 2


@pytest.mark.slow
@pytest.mark.e2e
def test_runs_as_a_module(tmp_path, images):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(clean_records() + [record("lost", image="nope.jpg")]))
    proc = subprocess.run(
        [sys.executable, "-m", "llava.visatb.check_data", "--data", str(data), "--image-folder", str(images)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "image files that do not exist: 1" in proc.stdout and "nope.jpg" in proc.stdout
