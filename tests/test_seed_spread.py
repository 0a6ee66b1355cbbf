"""The seed-spread measurement: own gains, seed-to-seed std of the mini model, their ratio, learning checks."""

from __future__ import annotations

import json
import statistics

import pytest

from llava.visatb.toy.seed_spread import load_run, main, summarize

METRICS = {"Cap": "caption", "QA": "qa"}


def _write_run(folder, mini_qa, own_qa, visatb_qa=0.9):
    """A finished two-task demo folder; every trained model beats start, full-data models beat mini."""
    folder.mkdir(parents=True)
    scores = {
        "start": {"Cap": 0.1, "QA": 0.0},
        "mini": {"Cap": 1.0, "QA": mini_qa},
        "Cap": {"Cap": 3.0, "QA": mini_qa + 0.01},
        "QA": {"Cap": 1.2, "QA": own_qa},
        "EW": {"Cap": 2.5, "QA": 0.85},
        "VisATB": {"Cap": 2.6, "QA": visatb_qa},
    }
    weights = {"tasks": ["Cap", "QA", "Text"], "visatb_weights": [1.2, 0.8, 1.0]}
    (folder / "scores.json").write_text(json.dumps(scores))
    (folder / "weights.json").write_text(json.dumps(weights))
    (folder / "pipeline.json").write_text(json.dumps({"metrics": METRICS}))


def test_gains_std_and_ratio_by_hand(tmp_path):
    minis, owns = [0.50, 0.54, 0.52], [0.90, 0.80, 0.86]
    for k, (m, o) in enumerate(zip(minis, owns)):
        _write_run(tmp_path / f"seed{k}", m, o)
    _write_run(tmp_path / "threads1", 0.51, 0.62)
    (tmp_path / "seed1.log").write_text("[demo] 1/3 toy benchmark\n[demo] finished in 512 s; in ...\n")
    runs = [load_run(tmp_path / f"seed{k}") for k in range(3)]
    data, markdown = summarize(runs, [load_run(tmp_path / "threads1")])
    qa = next(row for row in data["gains"] if row["task"] == "QA")
    # Gains 0.40, 0.26, 0.34 and 0.11 (the thread run); sample std of the seed runs' minis: 0.02.
    assert qa["gains"] == pytest.approx([0.40, 0.26, 0.34, 0.11])
    assert qa["mini_std"] == pytest.approx(statistics.stdev(minis)) and qa["mini_std"] == pytest.approx(0.02)
    assert qa["ratio"] == pytest.approx(0.11 / 0.02) and qa["ok"] is True
    cap = next(row for row in data["gains"] if row["task"] == "Cap")
    assert cap["gains"] == pytest.approx([2.0] * 4) and cap["mini_std"] == 0.0 and cap["ok"] is True
    assert data["every_gain_ok"] and data["every_check_passed"]
    assert "| QA (qa) | 40.00, 26.00, 34.00, 11.00 | 11.00 pts | 2.00 pts | 5.5 |" in markdown
    assert "| VisATB weight | 1.200 ± 0.000 | 0.800 ± 0.000 |" in markdown
    assert "| mini | 1.0000 ± 0.0000 | 52.00 ± 2.00 |" in markdown
    assert [row["seconds"] for row in data["checks"]] == [None, 512.0, None, None]


def test_a_gain_below_three_std_and_a_failed_check_are_reported(tmp_path):
    for k, (m, o) in enumerate(zip([0.50, 0.60, 0.40], [0.70, 0.65, 0.70])):
        _write_run(tmp_path / f"seed{k}", m, o)
    scores = json.loads((tmp_path / "seed2" / "scores.json").read_text())
    scores["Cap"]["QA"] = 0.0  # at the start's score: the first learning check fails
    (tmp_path / "seed2" / "scores.json").write_text(json.dumps(scores))
    code = main(["--runs", *(str(tmp_path / f"seed{k}") for k in range(3)), "--output", str(tmp_path / "s.md")])
    assert code == 3
    data = json.loads((tmp_path / "s.json").read_text())
    qa = next(row for row in data["gains"] if row["task"] == "QA")
    assert qa["min_gain"] == pytest.approx(0.05) and qa["mini_std"] == pytest.approx(0.1) and not qa["ok"]
    assert data["checks"][2]["failed"] and "Cap-plus-mini on QA" in data["checks"][2]["failed"][0]
    assert "(below 3)" in (tmp_path / "s.md").read_text()


def test_a_folder_without_results_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _write_run(tmp_path / "ok", 0.5, 0.9)
    assert main(["--runs", str(tmp_path / "empty"), str(tmp_path / "ok")]) == 1
    assert "empty/scores.json: missing" in capsys.readouterr().err


def test_cpu_path_runs_every_demo_on_capped_kernels_and_labels_them(tmp_path, monkeypatch):
    from llava.visatb.toy import seed_spread

    calls = []

    def fake_run_demo(output_dir, seed, threads, extra_env, log):
        calls.append((output_dir.name, seed, threads, dict(extra_env)))
        _write_run(output_dir, 0.5 + 0.01 * seed, 0.9)
        return 1.0

    monkeypatch.setattr(seed_spread, "run_demo", fake_run_demo)
    monkeypatch.setattr(seed_spread.platform, "machine", lambda: "x86_64")
    args = ["--seeds", "0", "1", "--threads-variant", "1", "--output-dir", str(tmp_path), "--cpu-path", "avx2"]
    assert main(args) == 0
    capped = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert calls == [("seed0-avx2", 0, None, capped), ("seed1-avx2", 1, None, capped),
                     ("seed0-threads1-avx2", 0, 1, capped)]  # fmt: skip
    assert "Runs: seed0-avx2, seed1-avx2, seed0-threads1-avx2" in (tmp_path / "seed_spread.md").read_text()


def test_cpu_path_is_refused_off_x86_and_with_finished_runs(tmp_path, monkeypatch, capsys):
    from llava.visatb.toy import seed_spread

    monkeypatch.setattr(seed_spread, "run_demo", lambda *a: pytest.fail("no demo may run"))
    monkeypatch.setattr(seed_spread.platform, "machine", lambda: "aarch64")
    assert main(["--output-dir", str(tmp_path), "--cpu-path", "avx2"]) == 1
    assert "caps x86 kernels; this machine is aarch64" in capsys.readouterr().err
    _write_run(tmp_path / "a", 0.5, 0.9)
    _write_run(tmp_path / "b", 0.5, 0.9)
    assert main(["--runs", str(tmp_path / "a"), str(tmp_path / "b"), "--cpu-path", "avx2"]) == 1
    assert "not to --runs" in capsys.readouterr().err
