"""Final models against STL: relative change per task, dI % and dE % (Eq. 9), the baseline, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llava.visatb.results import compare
from llava.visatb.results.compare import comparison_markdown, default_models, resolve_baseline

REPO = Path(__file__).resolve().parents[1]
TASKS = ["cap", "vqa", "err"]  # err: an error rate, lower is better

# Every kind of row; only EW and VisATB are final models. The preparation rows carry other numbers on
# purpose: picking one of them up as a baseline or a model would change every expected value below.
SCORES = {
    "start": {"cap": 0.05, "vqa": 0.01, "err": 0.90},
    "mini": {"cap": 0.30, "vqa": 0.20, "err": 0.50},
    "cap": {"cap": 0.45, "vqa": 0.25, "err": 0.45},
    "vqa": {"cap": 0.35, "vqa": 0.38, "err": 0.40},
    "err": {"cap": 0.32, "vqa": 0.22, "err": 0.25},
    "alone:cap": {"cap": 0.50, "vqa": 0.10},
    "alone:vqa": {"vqa": 0.40},
    "alone:err": {"err": 0.20, "cap": 0.30},
    "mini-alone:cap": {"cap": 0.25},
    "EW": {"cap": 0.55, "vqa": 0.36, "err": 0.15},
    "VisATB": {"cap": 0.60, "vqa": 0.44, "err": 0.25},
}
# STL = each task's own alone model on it: cap 0.50, vqa 0.40, err 0.20.
STL_ROW = {"cap": 0.50, "vqa": 0.40, "err": 0.20}
# EW:     I = (0.55 - 0.50) / 0.50 = 0.1, (0.36 - 0.40) / 0.40 = -0.1, -(0.15 - 0.20) / 0.20 = 0.25
#         dI = 100 * (0.1 - 0.1 + 0.25) / 3 = 25/3, dE = 100 * 0.1 / 3 = 10/3
# VisATB: I = (0.60 - 0.50) / 0.50 = 0.2, (0.44 - 0.40) / 0.40 = 0.1, -(0.25 - 0.20) / 0.20 = -0.25
#         dI = 100 * (0.2 + 0.1 - 0.25) / 3 = 5/3, dE = 100 * 0.25 / 3 = 25/3
EXPECTED = {
    "EW": {"relative": [0.1, -0.1, 0.25], "delta_I": 25 / 3, "delta_E": 10 / 3},
    "VisATB": {"relative": [0.2, 0.1, -0.25], "delta_I": 5 / 3, "delta_E": 25 / 3},
}


def assert_expected(comparison):
    assert list(comparison["models"]) == ["EW", "VisATB"]
    for model, expected in EXPECTED.items():
        entry = comparison["models"][model]
        assert entry["delta_I"] == pytest.approx(expected["delta_I"], abs=1e-9)
        assert entry["delta_E"] == pytest.approx(expected["delta_E"], abs=1e-9)
        for task, relative in zip(TASKS, expected["relative"]):
            assert entry["per_task"][task]["relative"] == pytest.approx(relative, abs=1e-12)
            assert entry["per_task"][task]["score"] == SCORES[model][task]
            assert entry["per_task"][task]["baseline"] == STL_ROW[task]


def test_hand_computed_three_tasks_with_a_lower_is_better_metric():
    table = {**SCORES, "STL": dict(STL_ROW)}
    baseline = resolve_baseline(table, "STL")
    assert baseline.scores == STL_ROW and not baseline.composed
    comparison = compare.compare(table, baseline, ["EW", "VisATB"], lower_is_better=["err"])
    assert comparison["baseline"] == "STL" and comparison["tasks"] == TASKS
    assert comparison["lower_is_better"] == ["err"]
    assert_expected(comparison)


def test_stl_is_composed_from_each_tasks_own_alone_model():
    baseline = resolve_baseline(SCORES, "STL")
    # alone:cap's 0.10 on vqa and alone:err's 0.30 on cap are not STL scores.
    assert baseline.scores == STL_ROW and baseline.composed
    assert list(baseline.scores) == ["cap", "vqa", "err"]  # the order of the alone: rows
    assert_expected(compare.compare(SCORES, baseline, ["EW", "VisATB"], ["err"]))
    assert resolve_baseline(SCORES, "STL", ["err", "cap"]).scores == {"err": 0.20, "cap": 0.50}


def test_without_lower_is_better_the_sign_of_the_error_rate_flips():
    comparison = compare.compare(SCORES, resolve_baseline(SCORES, "STL"), ["EW"])
    # I_err = (0.15 - 0.20) / 0.20 = -0.25: dI = 100 * (0.1 - 0.1 - 0.25) / 3, dE = 100 * (0.1 + 0.25) / 3
    assert comparison["models"]["EW"]["delta_I"] == pytest.approx(-25 / 3, abs=1e-9)
    assert comparison["models"]["EW"]["delta_E"] == pytest.approx(35 / 3, abs=1e-9)
    assert comparison["lower_is_better"] == []


def test_paper_table_3_recomputed():
    # arXiv 2403.04343, Table 3 and Eq. 9: Academic 7B fine-tuned tasks; IGBv1's dI recomputes to 1.17 (printed 0.17).
    tasks = ["ShareGPT4V", "RefCOCO-caption", "VQAv2", "GQA", "ChartQA", "OCRVQA", "RefCOCO-bbox"]
    rows = {
        "STL": [0.1285, 0.4658, 77.73, 61.23, 17.76, 68.22, 51.58],
        "EW": [0.1411, 0.5591, 78.27, 62.20, 19.60, 67.73, 61.63],
        "TLA": [0.1144, 0.5770, 77.72, 60.42, 22.36, 67.80, 56.58],
        "RLW": [0.1388, 0.5571, 77.28, 60.61, 18.20, 66.73, 55.86],
        "DWA": [0.1225, 0.5470, 78.28, 61.82, 19.88, 67.87, 61.12],
        "IGBv1": [0.1349, 0.4824, 77.00, 60.92, 17.20, 65.96, 55.47],
        "VisATB": [0.1437, 0.5724, 77.99, 61.81, 20.16, 67.48, 67.38],
    }
    table = {name: dict(zip(tasks, values)) for name, values in rows.items()}
    comparison = compare.compare(table, resolve_baseline(table, "STL"), default_models(table, "STL"))
    printed = {"EW": (8.75, 0.10), "TLA": (6.65, 1.85), "RLW": (4.95, 0.54), "DWA": (6.34, 0.74),
               "IGBv1": (1.17, 1.13), "VisATB": (11.29, 0.15)}  # fmt: skip
    got = {m: (round(e["delta_I"], 2), round(e["delta_E"], 2)) for m, e in comparison["models"].items()}
    assert got == printed


def test_default_models_are_the_final_method_rows():
    assert default_models(SCORES, "STL") == ["EW", "VisATB"]
    assert default_models({**SCORES, "STL": STL_ROW}, "STL") == ["EW", "VisATB"]
    # Against EW (the zero-shot baseline) an STL row is a model like any other.
    assert default_models({**SCORES, "STL": STL_ROW}, "EW") == ["VisATB", "STL"]


def test_markdown_table_baseline_first():
    lines = comparison_markdown(compare.compare(SCORES, resolve_baseline(SCORES), ["EW", "VisATB"], ["err"]))
    assert lines == [
        "| model | cap | vqa | err (lower is better) | dI % | dE % |",
        "|---|---:|---:|---:|---:|---:|",
        "| STL (baseline) | 0.5000 | 0.4000 | 0.2000 | - | - |",
        "| EW | 0.5500 | 0.3600 | 0.1500 | +8.33 | 3.33 |",
        "| VisATB | 0.6000 | 0.4400 | 0.2500 | +1.67 | 8.33 |",
    ]


# --- errors ----------------------------------------------------------------------------------


def test_missing_baseline_task_is_named():
    with pytest.raises(
        ValueError, match=r"scores.json: no STL baseline score on task\(s\) 'ocr': .*'alone:ocr'"
    ):
        resolve_baseline(SCORES, "STL", ["cap", "ocr"], source="scores.json")
    with pytest.raises(
        ValueError, match=r"s.json: the baseline row 'STL' has no score on task\(s\) 'vqa', 'err'"
    ):
        resolve_baseline({**SCORES, "STL": {"cap": 0.5}}, "STL", TASKS, source="s.json")
    with pytest.raises(ValueError, match=r"no row 'RLW' for the baseline"):
        resolve_baseline(SCORES, "RLW")
    with pytest.raises(ValueError, match=r"neither an 'STL' row nor any alone:<task> row"):
        resolve_baseline({"EW": {"cap": 1.0}}, "STL")


def test_zero_baseline_score_is_refused_naming_the_task():
    table = {**SCORES, "STL": {**STL_ROW, "vqa": 0.0}}
    with pytest.raises(ValueError, match=r"t.json: the baseline STL scores 0 on task 'vqa'.*undefined"):
        compare.compare(table, resolve_baseline(table), ["EW"], source="t.json")


def test_a_model_without_a_task_score_or_an_unknown_lower_task_is_named():
    with pytest.raises(ValueError, match=r"model 'alone:vqa' has no score on task 'cap'"):
        compare.compare(SCORES, resolve_baseline(SCORES), ["alone:vqa"])
    with pytest.raises(ValueError, match=r"--lower-is-better names ocr"):
        compare.compare(SCORES, resolve_baseline(SCORES), ["EW"], ["ocr"])


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path, capsys):
    scores, out, md = tmp_path / "scores.json", tmp_path / "comparison.json", tmp_path / "comparison.md"
    scores.write_text(json.dumps({**SCORES, "RLW": {"cap": 0.5}}))  # RLW: incomplete, skipped with a note
    code = compare.main(["--scores", str(scores), "--baseline", "STL", "--output", str(out),
                         "--lower-is-better", "err", "--markdown", str(md)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "skipped 'RLW': no score on vqa, err" in captured.err
    data = json.loads(out.read_text())
    assert set(data) == {"baseline", "tasks", "lower_is_better", "models"}
    assert data["baseline"] == "STL" and data["tasks"] == TASKS and data["lower_is_better"] == ["err"]
    assert set(data["models"]["EW"]) == {"delta_I", "delta_E", "per_task"}
    assert_expected(data)
    assert md.read_text().splitlines()[3] == "| EW | 0.5500 | 0.3600 | 0.1500 | +8.33 | 3.33 |"
    assert "| VisATB | 0.6000 | 0.4400 | 0.2500 | +1.67 | 8.33 |" in captured.out

    assert compare.main(["--scores", str(scores), "--output", str(out), "--models", "VisATB",
                         "--tasks", "vqa,cap"]) == 0  # fmt: skip
    data = json.loads(out.read_text())
    # vqa 0.1, cap 0.2: dI = 100 * 0.3 / 2 = 15, dE = 0
    assert list(data["models"]) == ["VisATB"] and data["tasks"] == ["vqa", "cap"]
    assert data["models"]["VisATB"]["delta_I"] == pytest.approx(15.0, abs=1e-9)
    assert data["models"]["VisATB"]["delta_E"] == 0.0


def test_cli_errors(tmp_path, capsys):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(SCORES))
    before = scores.read_text()
    assert compare.main(["--scores", str(scores), "--output", str(scores)]) == 2
    assert "--output" in capsys.readouterr().err and scores.read_text() == before
    out = tmp_path / "c.json"
    assert compare.main(["--scores", str(scores), "--output", str(out), "--tasks", "cap,ocr"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(scores) in err and "'ocr'" in err and not out.exists()
    assert compare.main(["--scores", str(scores), "--output", str(out), "--models", "EW,TLA"]) == 2
    assert "no row 'TLA'" in capsys.readouterr().err


def test_module_runs_from_the_command_line(tmp_path):
    scores, out = tmp_path / "scores.json", tmp_path / "comparison.json"
    scores.write_text(json.dumps(SCORES))
    proc = subprocess.run([sys.executable, "-m", "llava.visatb.results.compare", "--scores", str(scores), "--baseline",
                           "STL", "--output", str(out), "--lower-is-better", "err"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["models"]["EW"]["delta_I"] == pytest.approx(25 / 3, abs=1e-9)
    assert "each task's score from its own alone:<task> model" in proc.stdout


def _comparison(di_visatb: float, di_ew: float, de: float = 1.0) -> dict:
    models = {"VisATB": {"delta_I": di_visatb, "delta_E": de, "per_task": {}},
              "EW": {"delta_I": di_ew, "delta_E": 2 * de, "per_task": {}}}  # fmt: skip
    return {"baseline": "STL", "tasks": ["a", "b"], "lower_is_better": [], "models": models}


def test_summary_over_seeds_by_hand():
    runs = {
        "seed0": _comparison(4.0, 2.0),
        "seed1": _comparison(1.0, 3.0),
        "seed2": _comparison(7.0, 1.0, de=4.0),
    }
    runs["seed1"]["models"]["TLA"] = {"delta_I": 0.0, "delta_E": 0.0, "per_task": {}}  # not in every run
    summary = compare.summarize(runs)
    visatb = summary["models"]["VisATB"]
    # dI 4, 1, 7: mean 4, sample variance ((0)^2 + 3^2 + 3^2) / 2 = 9 -> std 3.
    assert visatb["delta_I"]["mean"] == pytest.approx(4.0) and visatb["delta_I"]["std"] == pytest.approx(3.0)
    # dE 1, 1, 4: mean 2, variance (1 + 1 + 4) / 2 = 3.
    assert visatb["delta_E"]["mean"] == pytest.approx(2.0) and visatb["delta_E"]["std"] == pytest.approx(
        3**0.5
    )
    assert summary["models"]["EW"]["delta_I"]["values"] == [2.0, 3.0, 1.0]
    assert summary["visatb_beats_ew"] == {"runs": ["seed0", "seed2"], "count": 2, "of": 3}
    assert summary["not_in_every_run"] == ["TLA"] and "TLA" not in summary["models"]
    lines = compare.summary_markdown(summary)
    assert "| VisATB | +4.00 +- 3.00 | 2.00 +- 1.73 | +4.00, +1.00, +7.00 |" in lines
    assert "VisATB's dI is above EW's on 2 of 3 run(s) (seed0, seed2)." in lines


def test_summary_refuses_runs_of_other_tasks():
    other = _comparison(1.0, 1.0)
    other["tasks"] = ["a", "c"]
    with pytest.raises(ValueError, match="seed1: tasks"):
        compare.summarize({"seed0": _comparison(1.0, 1.0), "seed1": other})


def test_cli_summarize_and_plot(tmp_path, capsys):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(SCORES))
    paths = []
    for seed, factor in (("seed0", 1.0), ("seed1", 1.1)):
        folder = tmp_path / seed
        folder.mkdir()
        table = {k: dict(v) for k, v in SCORES.items()}
        table["VisATB"] = {t: s * factor for t, s in SCORES["VisATB"].items()}
        (folder / "scores.json").write_text(json.dumps(table))
        out = folder / "comparison.json"
        argv = ["--scores", str(folder / "scores.json"), "--output", str(out), "--lower-is-better", "err",
                "--plot", str(folder / "comparison.png")]  # fmt: skip
        assert compare.main(argv) == 0
        assert (folder / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        paths.append(str(out))
    capsys.readouterr()
    summary_file = tmp_path / "comparison_seeds.json"
    assert compare.main(["--summarize", *paths, "--output", str(summary_file)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(summary_file.read_text())
    assert summary["runs"] == ["seed0", "seed1"]
    # seed1's VisATB: 0.66, 0.484, 0.275 against 0.50, 0.40, 0.20: I = 0.32, 0.21, -0.375.
    assert summary["models"]["VisATB"]["delta_I"]["values"] == pytest.approx(
        [5 / 3, 100 * (0.32 + 0.21 - 0.375) / 3]
    )
    assert summary["models"]["EW"]["delta_I"]["std"] == pytest.approx(0.0)
    assert summary["visatb_beats_ew"]["count"] == 0 and "on 0 of 2 run(s)." in printed
    assert compare.main(["--summarize", *paths, "--scores", str(scores), "--output", str(summary_file)]) == 2
    assert "not both" in capsys.readouterr().err


def test_stl_of_grouped_tasks_comes_from_their_groups_alone_model():
    scores = {
        "alone:G1": {"A": 0.5, "B": 2.0, "C": 0.1},
        "alone:G2": {"A": 0.1, "B": 0.3, "C": 0.8},
        "G1": {"A": 0.4, "B": 1.0, "C": 0.2},
        "VisATB": {"A": 0.6, "B": 1.5, "C": 0.8},
    }
    groups = {"G1": ["A", "B"], "G2": ["C"]}
    baseline = compare.resolve_baseline(scores, "STL", ["A", "B", "C"], groups=groups)
    assert baseline.scores == {"A": 0.5, "B": 2.0, "C": 0.8} and baseline.composed
    assert compare.default_models(scores, "STL", list(groups)) == ["VisATB"]
    result = compare.compare(scores, baseline, ["VisATB"])
    # I = +0.2, -0.25, 0: dI = 100 * (-0.05 / 3), dE = 100 * 0.25 / 3
    assert result["models"]["VisATB"]["delta_I"] == pytest.approx(100 * (0.2 - 0.25) / 3)
    assert result["models"]["VisATB"]["delta_E"] == pytest.approx(100 * 0.25 / 3)
    with pytest.raises(ValueError, match="'alone:G2'"):
        compare.resolve_baseline({"alone:G1": scores["alone:G1"]}, "STL", ["A", "C"], groups=groups)
