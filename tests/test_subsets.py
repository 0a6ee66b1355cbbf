"""The sub-dataset builder: mini and task-plus-mini sets, validation carving, naming, manifest, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llava.visatb.subsets import (
    build_alone_subsets,
    build_subsets,
    carve_validation,
    dataset_name,
    human_size,
    main,
    mini_size,
)

REPO = Path(__file__).resolve().parents[1]
SIZES = {"A": 64, "B": 33, "C": 5}


def make_records(sizes=SIZES):
    """Records of several tasks, interleaved as in a shuffled multi-task file."""
    records, left = [], dict(sizes)
    while any(left.values()):
        for task in sizes:
            if left[task]:
                k = sizes[task] - left[task]
                records.append(
                    {
                        "id": f"{task}-{k}",
                        "task": task,
                        "conversations": [
                            {"from": "human", "value": f"question {k}"},
                            {"from": "gpt", "value": f"answer {k}"},
                        ],
                    }
                )
                left[task] -= 1
    return records


def ids(records):
    return [r["id"] for r in records]


def ids_of(records, task):
    return {r["id"] for r in records if r["task"] == task}


def test_mini_size_rule():
    # round(fraction * n), half up, at least one record, at most all of them.
    assert mini_size(64, 1 / 32) == 2
    assert mini_size(33, 1 / 32) == 1  # 1.03
    assert mini_size(5, 1 / 32) == 1  # 0.16, raised to 1
    assert mini_size(6, 0.25) == 2  # 1.5 rounds up
    assert mini_size(5, 0.25) == 1  # 1.25
    assert mini_size(3, 1.0) == 3


def test_human_size_and_dataset_name():
    assert [human_size(n) for n in (7, 999, 1000, 1499, 1500, 14_840, 475_000, 1_169_000)] == [
        "7", "999", "1k", "1k", "2k", "15k", "475k", "1169k",
    ]  # fmt: skip
    assert dataset_name("data/Academic_train-475k.json") == "Academic"
    assert dataset_name("Chat_train-157k.json") == "Chat"
    assert dataset_name("toy.json") == "toy"
    assert dataset_name("llava_v1_5_mix665k.json") == "llava_v1_5_mix665k"


def test_mini_is_stratified_and_plus_mini_adds_the_other_minis():
    records = make_records()
    mini, plus_mini = build_subsets(records, ["A", "B", "C"], fraction=0.25, seed=1)
    # A: round(16) = 16, B: round(8.25) = 8, C: round(1.25) = 1.
    assert {t: len(ids_of(mini, t)) for t in SIZES} == {"A": 16, "B": 8, "C": 1}
    assert len(mini) == 25 and len(set(ids(mini))) == 25
    for task in SIZES:
        subset = plus_mini[task]
        assert ids_of(subset, task) == ids_of(records, task)
        for other in SIZES:
            if other != task:
                assert ids_of(subset, other) == ids_of(mini, other)
        assert len(subset) == SIZES[task] + 25 - len(ids_of(mini, task))
    # Records keep their order in the input file.
    position = {r["id"]: k for k, r in enumerate(records)}
    for subset in [mini, *plus_mini.values()]:
        order = [position[r["id"]] for r in subset]
        assert order == sorted(order)


def test_alone_sets_are_each_task_and_its_share_of_the_mini_set():
    records = make_records()
    mini, _ = build_subsets(records, fraction=0.25, seed=3)
    alone, mini_alone = build_alone_subsets(records, fraction=0.25, seed=3)
    for task, size in SIZES.items():
        assert [r["id"] for r in alone[task]] == [f"{task}-{k}" for k in range(size)]
        assert mini_alone[task] == [r for r in mini if r["task"] == task]
    # round(0.25 * 64) = 16, round(0.25 * 33) = 8 (8.25), round(0.25 * 5) = 1 (1.25)
    assert [len(mini_alone[t]) for t in SIZES] == [16, 8, 1]


def test_default_fraction_keeps_one_record_of_small_tasks():
    mini, _ = build_subsets(make_records(), None, seed=0)
    assert {t: len(ids_of(mini, t)) for t in SIZES} == {"A": 2, "B": 1, "C": 1}


def test_same_seed_same_subsets_different_seed_different():
    records = make_records()
    first = build_subsets(records, None, fraction=0.25, seed=3)
    again = build_subsets(make_records(), None, fraction=0.25, seed=3)
    other = build_subsets(records, None, fraction=0.25, seed=4)
    assert ids(first[0]) == ids(again[0])
    assert {t: ids(s) for t, s in first[1].items()} == {t: ids(s) for t, s in again[1].items()}
    assert ids(first[0]) != ids(other[0])


def test_carve_validation_holds_records_out():
    records = make_records()
    train, val = carve_validation(records, 3, ["A", "B", "C"], seed=0)
    assert {t: len(v) for t, v in val.items()} == {"A": 3, "B": 3, "C": 3}
    held = {r["id"] for v in val.values() for r in v}
    assert len(held) == 9 and held.isdisjoint(ids(train))
    assert len(train) == len(records) - 9
    with pytest.raises(ValueError, match="task 'C' has 5 records, too few to carve 5"):
        carve_validation(records, 5, None)


def test_unknown_or_missing_task_is_named():
    records = make_records()
    records[4]["task"] = "Z"
    with pytest.raises(ValueError, match=r"record 4 \(id 'B-1'\) has task 'Z'.*A, B, C"):
        build_subsets(records, ["A", "B", "C"])
    del records[4]["task"]
    with pytest.raises(ValueError, match=r"record 4 \(id 'B-1'\) has no 'task'"):
        build_subsets(records, None)
    with pytest.raises(ValueError, match="no records of task"):
        build_subsets(make_records(), ["A", "B", "C", "D"])
    with pytest.raises(ValueError, match="mini fraction"):
        build_subsets(make_records(), None, fraction=0.0)


def test_cli_writes_named_files_manifest_and_table(tmp_path, capsys):
    data = tmp_path / "Toy_train-102.json"
    data.write_text(json.dumps(make_records()))
    out = tmp_path / "subsets"
    argv = ["--data", str(data), "--output-dir", str(out), "--tasks", "A,B,C", "--mini-fraction", "0.25",
            "--seed", "7", "--val-per-task", "2"]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    # Training after carving: A 62, B 31, C 3 -> mini A round(15.5) = 16, B round(7.75) = 8, C 1.
    expected_files = {
        "A_val-2.json": 2,
        "B_val-2.json": 2,
        "C_val-2.json": 2,
        "Toy_train-96.json": 96,
        "Toy-mini_train-25.json": 25,
        "A-plus-mini_train-71.json": 62 + 8 + 1,
        "B-plus-mini_train-48.json": 31 + 16 + 1,
        "C-plus-mini_train-27.json": 3 + 16 + 8,
        "subsets.json": None,
    }
    assert {p.name for p in out.iterdir()} == set(expected_files)
    for name, count in expected_files.items():
        if count is not None:
            assert len(json.loads((out / name).read_text())) == count
    manifest = json.loads((out / "subsets.json").read_text())
    assert manifest["tasks"] == ["A", "B", "C"]
    assert manifest["mini"]["file"] == "Toy-mini_train-25.json"
    assert manifest["mini"]["per_task"] == {"A": 16, "B": 8, "C": 1}
    assert manifest["plus_mini"]["B"]["per_task"] == {"A": 16, "B": 31, "C": 1}
    assert Path(manifest["plus_mini"]["C"]["path"]) == (out / "C-plus-mini_train-27.json").resolve()
    assert manifest["val"]["A"]["count"] == 2 and manifest["train"]["count"] == 96
    # Validation records are in no training subset.
    val_ids = {r["id"] for t in "ABC" for r in json.loads((out / f"{t}_val-2.json").read_text())}
    for name in expected_files:
        if "train" in name:
            assert val_ids.isdisjoint(r["id"] for r in json.loads((out / name).read_text()))
    assert "A" in table and "mini" in table and "Toy-mini_train-25.json" in table

    # Deterministic: a second run writes identical files.
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "subsets.json"}
    assert main(argv) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "subsets.json"} == before


def test_cli_errors_and_check(tmp_path, capsys):
    data = tmp_path / "toy.json"
    data.write_text(json.dumps(make_records()))
    out = tmp_path / "out"
    assert main(["--data", str(data), "--output-dir", str(out), "--tasks", "A,B"]) == 2
    assert "has task 'C', which is not in the task list" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nope.json"), "--output-dir", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err

    records = make_records()
    records[0]["image"] = "missing.jpg"  # and no <image> token either
    data.write_text(json.dumps(records))
    (tmp_path / "images").mkdir()
    argv = [
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--check",
        "--image-folder",
        str(tmp_path / "images"),
    ]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "missing.jpg" in captured.out and "no subsets written" in captured.err
    assert not out.exists()


def test_runs_as_a_module(tmp_path):
    data = tmp_path / "toy.json"
    data.write_text(json.dumps(make_records()))
    proc = subprocess.run(
        [sys.executable, "-m", "llava.visatb.subsets", "--data", str(data), "--output-dir", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "toy-mini_train-4.json").is_file()
    assert not list((tmp_path / "o").glob("*.tmp"))


# ---------------------------------------------------------------------------------------------- groups, large fraction


def _ids(records, task=None):
    return {r["id"] for r in records if task is None or r["task"] == task}


def test_large_fraction_one_keeps_the_earlier_draws():
    # Without a large fraction the mini share of a task is random.Random(f"{seed}/mini/{task}").sample() of the
    # task's record positions, as before large fractions existed: earlier runs' subsets are reproduced.
    import random

    records = make_records()
    mini, plus = build_subsets(records, fraction=0.25, seed=3, large_fraction=1.0)
    for task, n in SIZES.items():
        positions = [i for i, r in enumerate(records) if r["task"] == task]
        drawn = random.Random(f"3/mini/{task}").sample(positions, mini_size(n, 0.25))
        assert _ids(mini, task) == {records[i]["id"] for i in drawn}
        assert _ids(plus[task], task) == {records[i]["id"] for i in positions}


def test_large_fraction_shares_and_minis_drawn_from_them():
    # A 64, B 33, C 5 records; R = 1/4: large shares round(16) = 16, round(8.25) = 8, round(1.25) = 1;
    # minis of 1/8 of each whole task: round(8) = 8, round(4.125) = 4, round(0.625) = 1, all inside the shares.
    records = make_records()
    mini, plus = build_subsets(records, fraction=1 / 8, seed=0, large_fraction=0.25)
    assert len(_ids(mini, "A")) == 8 and len(_ids(mini, "B")) == 4 and len(_ids(mini, "C")) == 1
    large = {t: _ids(plus[t], t) for t in SIZES}
    assert {t: len(v) for t, v in large.items()} == {"A": 16, "B": 8, "C": 1}
    for task in SIZES:
        assert _ids(mini, task) <= large[task]
        others = [t for t in SIZES if t != task]
        assert all(_ids(plus[task], t) == _ids(mini, t) for t in others)
    assert len(plus["A"]) == 16 + 4 + 1 and len(plus["B"]) == 8 + 8 + 1 and len(plus["C"]) == 1 + 8 + 4
    again, _ = build_subsets(records, fraction=1 / 8, seed=0, large_fraction=0.25)
    assert _ids(again) == _ids(mini)


def test_large_fraction_below_the_mini_fraction_is_refused():
    with pytest.raises(ValueError, match="large fraction 0.1 is below the mini fraction 0.25"):
        build_subsets(make_records(), fraction=0.25, large_fraction=0.1)
    with pytest.raises(ValueError, match=r"large fraction must be in \(0, 1\]"):
        build_subsets(make_records(), fraction=0.25, large_fraction=1.5)


def test_groups_get_one_set_each_with_the_other_groups_minis():
    records = make_records()
    groups = {"G1": ["A", "C"], "G2": ["B"]}
    mini, plus = build_subsets(records, fraction=1 / 8, seed=1, groups=groups)
    assert sorted(plus) == ["G1", "G2"]
    # G1: all of A (64) and C (5) plus B's mini (4); G2: all of B (33) plus the minis of A (8) and C (1).
    assert len(plus["G1"]) == 64 + 5 + 4 and _ids(plus["G1"], "B") == _ids(mini, "B")
    assert len(plus["G2"]) == 33 + 8 + 1 and _ids(plus["G2"], "A") == _ids(mini, "A")
    plain_mini, _ = build_subsets(records, fraction=1 / 8, seed=1)
    assert mini == plain_mini  # the mini set does not depend on the grouping
    alone, mini_alone = build_alone_subsets(records, fraction=1 / 8, seed=1, groups=groups)
    assert len(alone["G1"]) == 69 and len(alone["G2"]) == 33
    assert _ids(mini_alone["G1"]) == _ids(mini, "A") | _ids(mini, "C")
    order = [r["id"] for r in records]
    assert [r["id"] for r in plus["G1"]] == [i for i in order if i in _ids(plus["G1"])]  # input order kept


def test_groups_naming_unknown_or_repeated_tasks_are_errors():
    with pytest.raises(ValueError, match="group task.*D have no records"):
        build_subsets(make_records(), groups={"G1": ["A", "D"], "G2": ["B", "C"]})
    with pytest.raises(ValueError, match="A are in more than one group"):
        build_subsets(make_records(), groups={"G1": ["A"], "G2": ["A", "B", "C"]})


def test_cli_groups_and_large_fraction_in_manifest_and_table(tmp_path, capsys):
    data = tmp_path / "mix_train-102.json"
    data.write_text(json.dumps(make_records()))
    out = tmp_path / "subsets"
    code = main(["--data", str(data), "--output-dir", str(out), "--mini-fraction", "0.125",
                 "--task-groups", "G1=A,C;G2=B", "--large-fraction", "0.5", "--alone"])  # fmt: skip
    assert code == 0
    manifest = json.loads((out / "subsets.json").read_text())
    assert manifest["groups"] == {"G1": ["A", "C"], "G2": ["B"]} and manifest["large_fraction"] == 0.5
    assert sorted(manifest["plus_mini"]) == ["G1", "G2"] and sorted(manifest["alone"]) == ["G1", "G2"]
    # G1: half of A (32) and of C (round(2.5) = 3) plus B's mini (round(4.125) = 4).
    assert manifest["plus_mini"]["G1"]["per_task"] == {"A": 32, "B": 4, "C": 3}
    assert (out / manifest["plus_mini"]["G1"]["file"]).name == "G1-plus-mini_train-39.json"
    table = capsys.readouterr().out
    assert "groups: G1 = A, C; G2 = B" in table and "large" in table.splitlines()[0]
    code = main(["--data", str(data), "--output-dir", str(out), "--task-groups", "G1=A;G1=B"])
    assert code == 2 and "group 'G1' is given twice" in capsys.readouterr().err
