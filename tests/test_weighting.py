"""VisATB weights: contributions, difficulty and weights from scores or vectors; the weights file; the CLI."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llava.visatb import weighting
from llava.visatb.weighting import (
    PAPER_SETTINGS,
    contribution_matrix,
    difficulty,
    get_paper_setting,
    load_visatb_weights_file,
    out_in_contributions,
    plan_tasks,
    plot_weights,
    weights_from_measures,
    weights_from_scores,
    write_weights_file,
)

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WEIGHTS_LINE = re.compile(r'^VISATB_WEIGHTS="\d+\.\d{4}( \d+\.\d{4})*"$')

# A hand-built table for three tasks A, B, C; the arithmetic is written out in the tests below.
SCORES = {
    "mini": {"A": 0.40, "B": 0.20, "C": 0.50},
    "A": {"A": 0.80, "B": 0.30, "C": 0.55},
    "B": {"A": 0.50, "B": 0.60, "C": 0.60},
    "C": {"A": 0.60, "B": 0.20, "C": 1.00},
    "final-EW": {"A": 0.9},  # a final model: ignored by the weighting
}


def reference_weights(c_out, c_in, d, t):
    """The method doc's formulas, written independently (plain softmax, no max subtraction)."""
    c_out, c_in, d = (np.asarray(v, dtype=np.float64) for v in (c_out, c_in, d))
    n = len(c_out)

    def scaled_softmax(x):
        e = np.exp(x / t)
        return n * e / e.sum()

    w_out, w_in, w_diff = scaled_softmax(c_out), scaled_softmax(-c_in), scaled_softmax(d)
    w_inter = (w_out + w_in) / 2
    return {"out": w_out, "in": w_in, "inter": w_inter, "difficulty": w_diff, "final": (w_inter + w_diff) / 2}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "weighting_visatb.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


# --- the paper's vectors ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
def test_paper_settings_give_the_formulas_weights(name):
    setting = PAPER_SETTINGS[name]
    result = setting.weights()
    # The release stores 1 - D; D itself goes into the softmax.
    d = [1 - r for r in setting.mini_ratio]
    expected = reference_weights(setting.out_contribution, setting.in_contribution, d, 0.5)
    for family, values in expected.items():
        np.testing.assert_allclose(result.weights[family], values, rtol=1e-12)
    n = len(setting.out_contribution)
    for family in weighting.WEIGHT_FAMILIES:
        assert sum(result.weights[family]) == pytest.approx(n)


def test_academic_7b_matches_the_release_printout_and_pads_sharegpt():
    result = get_paper_setting("academic-7b").weights()
    # Printed by the reference release's script (torch, float32) for the same vectors.
    release_final = [0.8585, 1.0557, 0.8107, 0.8151, 1.0020, 0.8177, 1.6403]
    np.testing.assert_allclose(result.weights["final"], release_final, atol=6e-5)
    assert result.tasks[-1] == "ShareGPT" and result.visatb_weights[-1] == 1.0
    assert len(result.visatb_weights) == 8
    assert result.weights_string() == "0.8585 1.0557 0.8107 0.8151 1.0020 0.8177 1.6403 1.0000"


def test_chat_by_hand_first_weight():
    # w_out(conversation) = 3 * e^(0.7601/0.5) / (e^(0.7601/0.5) + e^(0.3496/0.5) + e^(1.6727/0.5))
    e = [math.exp(0.7601 / 0.5), math.exp(0.3496 / 0.5), math.exp(1.6727 / 0.5)]
    result = get_paper_setting("chat").weights()
    assert result.weights["out"][0] == pytest.approx(3 * e[0] / sum(e))
    assert sum(result.visatb_weights) == pytest.approx(3.0)


# --- a hand-built scores table ---------------------------------------------------------------


def test_contribution_matrix_by_hand():
    # Own gains: A 0.8-0.4 = 0.4, B 0.6-0.2 = 0.4, C 1.0-0.5 = 0.5.
    matrix = contribution_matrix(SCORES, ["A", "B", "C"])
    expected = [
        [None, (0.30 - 0.20) / 0.4, (0.55 - 0.50) / 0.5],  # A->B 0.25, A->C 0.1
        [(0.50 - 0.40) / 0.4, None, (0.60 - 0.50) / 0.5],  # B->A 0.25, B->C 0.2
        [(0.60 - 0.40) / 0.4, (0.20 - 0.20) / 0.4, None],  # C->A 0.5,  C->B 0.0
    ]
    for row, expected_row in zip(matrix, expected):
        assert row == pytest.approx(expected_row)
    c_out, c_in = out_in_contributions(matrix)
    assert c_out == pytest.approx([(0.25 + 0.1) / 2, (0.25 + 0.2) / 2, (0.5 + 0.0) / 2])
    assert c_in == pytest.approx([(0.25 + 0.5) / 2, (0.25 + 0.0) / 2, (0.1 + 0.2) / 2])


def test_difficulty_by_hand():
    # D = 1 - V_i(mini)/V_i(i+mini): A 1 - 0.4/0.8, B 1 - 0.2/0.6, C 1 - 0.5/1.0.
    assert difficulty(SCORES, ["A", "B", "C"]) == pytest.approx([0.5, 2 / 3, 0.5])


def test_weights_from_scores_by_hand():
    result = weights_from_scores(SCORES, ["A", "B", "C"], temperature=0.5)
    # C_out = 0.175, 0.225, 0.25 -> exponents C_out / 0.5 = 0.35, 0.45, 0.5.
    e_out = [math.exp(0.35), math.exp(0.45), math.exp(0.5)]
    w_out = [3 * x / sum(e_out) for x in e_out]
    # C_in = 0.375, 0.125, 0.15 -> exponents -C_in / 0.5 = -0.75, -0.25, -0.3.
    e_in = [math.exp(-0.75), math.exp(-0.25), math.exp(-0.3)]
    w_in = [3 * x / sum(e_in) for x in e_in]
    # D = 0.5, 2/3, 0.5 -> exponents 1, 4/3, 1.
    e_d = [math.exp(1.0), math.exp(4 / 3), math.exp(1.0)]
    w_d = [3 * x / sum(e_d) for x in e_d]
    w_inter = [(a + b) / 2 for a, b in zip(w_out, w_in)]
    w_final = [(a + b) / 2 for a, b in zip(w_inter, w_d)]
    assert result.weights["out"] == pytest.approx(w_out)
    assert result.weights["in"] == pytest.approx(w_in)
    assert result.weights["difficulty"] == pytest.approx(w_d)
    assert result.weights["inter"] == pytest.approx(w_inter)
    assert result.weights["final"] == pytest.approx(w_final)
    assert result.visatb_weights == pytest.approx(w_final)
    assert result.out_contribution == pytest.approx([0.175, 0.225, 0.25])
    assert result.difficulty == pytest.approx([0.5, 2 / 3, 0.5])


def test_a_lower_temperature_sharpens_the_weights():
    soft = weights_from_scores(SCORES, ["A", "B", "C"], temperature=5.0).weights["final"]
    sharp = weights_from_scores(SCORES, ["A", "B", "C"], temperature=0.1).weights["final"]
    assert max(sharp) - min(sharp) > max(soft) - min(soft)


def test_softmax_survives_huge_measures():
    w = weighting.weight_families([1000.0, 999.0], [0.0, 0.0], [0.0, 0.0], temperature=0.01)
    assert all(math.isfinite(x) for x in w["out"])
    assert w["out"] == pytest.approx([2.0, 0.0], abs=1e-30)


# --- unscored tasks and task order ---------------------------------------------------------


def test_unscored_tasks_keep_one_in_their_position():
    all_tasks, scored = plan_tasks(["A", "Text", "B", "C"], ["Text"])
    assert scored == ["A", "B", "C"]
    result = weights_from_scores(SCORES, scored, all_tasks)
    assert result.tasks == ["A", "Text", "B", "C"]
    final = result.weights["final"]
    assert result.visatb_weights == [final[0], 1.0, final[1], final[2]]


def test_sharegpt_is_unscored_by_default_and_table_tasks_are_sorted():
    assert plan_tasks(["VQAv2", "GQA", "ShareGPT"], None) == (["VQAv2", "GQA", "ShareGPT"], ["VQAv2", "GQA"])
    shuffled = {"C": SCORES["C"], "mini": SCORES["mini"], "B": SCORES["B"], "A": SCORES["A"], "x": {"A": 1}}
    assert plan_tasks(None, None, scores=shuffled) == (["A", "B", "C"], ["A", "B", "C"])
    assert plan_tasks(None, ["Text"], scores=shuffled) == (["A", "B", "C", "Text"], ["A", "B", "C"])


# --- the weights file ------------------------------------------------------------------------


def test_weights_file_round_trip(tmp_path):
    all_tasks, scored = plan_tasks(["A", "Text", "B", "C"], ["Text"])
    result = weights_from_scores(SCORES, scored, all_tasks, temperature=0.5)
    path = tmp_path / "weights.json"
    write_weights_file(path, result)
    data = json.loads(path.read_text())
    assert set(data) == {
        "tasks",
        "temperature",
        "scored_tasks",
        "contribution_matrix",
        "out_contribution",
        "in_contribution",
        "difficulty",
        "weights",
        "visatb_weights",
    }
    assert set(data["weights"]) == {"out", "in", "inter", "difficulty", "final"}
    assert [data["contribution_matrix"][k][k] for k in range(3)] == [None, None, None]
    assert data["contribution_matrix"][2][0] == pytest.approx(0.5)
    assert data["temperature"] == 0.5 and data["scored_tasks"] == ["A", "B", "C"]
    assert load_visatb_weights_file(path, ["A", "Text", "B", "C"]) == result.visatb_weights


def test_weights_file_for_other_tasks_is_refused_naming_both_lists(tmp_path):
    path = tmp_path / "weights.json"
    write_weights_file(path, weights_from_scores(SCORES, ["A", "B", "C"]))
    with pytest.raises(ValueError, match=r"\[A, B, C\].*\[B, A, C\]"):
        load_visatb_weights_file(path, ["B", "A", "C"])
    with pytest.raises(ValueError, match=r"\[A, B, C\].*\[A, B, C, D\]"):
        load_visatb_weights_file(path, ["A", "B", "C", "D"])


def test_by_hand_result_has_no_matrix_in_json():
    result = weights_from_measures([0.1, 0.2], [0.2, 0.1], [0.3, 0.4], ["A", "B"])
    assert result.to_json()["contribution_matrix"] is None


# --- the plot --------------------------------------------------------------------------------


def test_plot_is_a_png(tmp_path):
    all_tasks, scored = plan_tasks(["A", "Text", "B", "C"], ["Text"])
    plot_weights(weights_from_scores(SCORES, scored, all_tasks), tmp_path / "w.png")
    plot_weights(get_paper_setting("chat").weights(), tmp_path / "chat.png")
    for name in ("w.png", "chat.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


# --- errors ----------------------------------------------------------------------------------


def _without(model, task):
    table = {k: dict(v) for k, v in SCORES.items()}
    del table[model][task]
    return table


def test_missing_score_entry_names_model_and_task():
    with pytest.raises(ValueError, match=r"model key 'B'.*task 'C'"):
        weights_from_scores(_without("B", "C"), ["A", "B", "C"])
    with pytest.raises(ValueError, match=r"model key 'mini'.*task 'A'"):
        weights_from_scores(_without("mini", "A"), ["A", "B", "C"])
    table = {k: v for k, v in SCORES.items() if k != "C"}
    with pytest.raises(ValueError, match=r"no scores for model key 'C'"):
        weights_from_scores(table, ["A", "B", "C"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", None, True])
def test_non_finite_score_is_named(bad):
    table = {k: dict(v) for k, v in SCORES.items()}
    table["A"]["B"] = bad
    with pytest.raises(ValueError, match=r"model key 'A' on task 'B'.*not a finite number"):
        weights_from_scores(table, ["A", "B", "C"])


def test_task_without_own_gain_is_named():
    table = {k: dict(v) for k, v in SCORES.items()}
    table["B"]["B"] = table["mini"]["B"]
    with pytest.raises(ValueError, match=r"task 'B'.*no gain"):
        weights_from_scores(table, ["A", "B", "C"])


def test_zero_full_data_score_is_named():
    table = {k: dict(v) for k, v in SCORES.items()}
    table["mini"]["C"], table["C"]["C"] = -0.1, 0.0  # own gain 0.1, but the ratio divides by 0
    with pytest.raises(ValueError, match=r"V_C\(C\+mini\) is 0"):
        weights_from_scores(table, ["A", "B", "C"])


def test_fewer_than_two_scored_tasks():
    with pytest.raises(ValueError, match="at least two scored tasks"):
        weights_from_scores(SCORES, ["A"])
    with pytest.raises(ValueError, match="at least two scored tasks"):
        weights_from_measures([0.1], [0.1], [0.1], ["A"])
    with pytest.raises(ValueError, match="fewer than two tasks"):
        plan_tasks(None, None, scores={"mini": {"A": 1.0}, "A": {"A": 2.0}})


def test_vectors_of_unequal_length():
    with pytest.raises(
        ValueError, match="lengths differ: out contribution 3, in contribution 2, difficulty 3"
    ):
        weights_from_measures([0.1, 0.2, 0.3], [0.1, 0.2], [0.1, 0.2, 0.3], ["A", "B", "C"])
    with pytest.raises(ValueError, match="3 values per vector but 2 scored tasks"):
        weights_from_measures([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], ["A", "B"])


def test_unknown_paper_setting_and_bad_temperature():
    with pytest.raises(ValueError, match="unknown paper setting 'academic-70b'.*academic-7b"):
        get_paper_setting("academic-70b")
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        weights_from_scores(SCORES, ["A", "B", "C"], temperature=0.0)


def test_unscored_task_outside_the_list():
    with pytest.raises(ValueError, match="unscored task.*Text.*not in the task list"):
        plan_tasks(["A", "B"], ["Text"])


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_without_arguments_prints_the_paper_settings():
    proc = run_cli()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    weight_lines = [line for line in lines if line.startswith("VISATB_WEIGHTS=")]
    assert len(weight_lines) == 3 and all(WEIGHTS_LINE.match(line) for line in weight_lines)
    expected = [
        get_paper_setting(n).weights().weights_string() for n in ("academic-7b", "academic-13b", "chat")
    ]
    assert weight_lines == [f'VISATB_WEIGHTS="{w}"' for w in expected]
    assert "Vicuna-13B" in proc.stdout and "Chat" in proc.stdout
    assert "--scores" in lines[-1]


def test_cli_scores_to_json_and_plot(tmp_path):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(SCORES))
    out, png = tmp_path / "weights.json", tmp_path / "plot.png"
    proc = run_cli("--scores", str(scores), "--tasks", "A,Text,B,C", "--unscored-tasks", "Text",
                   "--temperature", "0.5", "--output", str(out), "--plot", str(png))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert WEIGHTS_LINE.match(last)
    expected = weights_from_scores(SCORES, ["A", "B", "C"], ["A", "Text", "B", "C"]).visatb_weights
    assert [float(x) for x in last.split('"')[1].split()] == pytest.approx(expected, abs=5e-5)
    assert last.split('"')[1].split()[1] == "1.0000"
    assert "C[source -> target]" in proc.stdout
    assert load_visatb_weights_file(out, ["A", "Text", "B", "C"]) == pytest.approx(expected)
    assert png.read_bytes().startswith(PNG_SIGNATURE)


def test_cli_by_hand_and_errors(tmp_path):
    proc = run_cli("--out-contribution", "0.1", "0.2", "--in-contribution", "0.2", "0.1",
                   "--difficulty", "0.5", "0.3", "--tasks", "X,Y")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    expected = reference_weights([0.1, 0.2], [0.2, 0.1], [0.5, 0.3], 0.5)["final"]
    assert proc.stdout.strip().splitlines()[-1] == 'VISATB_WEIGHTS="{:.4f} {:.4f}"'.format(*expected)

    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(_without("A", "C")))
    proc = run_cli("--scores", str(scores), "--task-preset", "academic")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "ShareGPT4V" in proc.stderr  # the first missing entry of the academic tasks

    proc = run_cli("--scores", str(scores), "--task-preset", "nosuch")
    assert proc.returncode == 2 and "unknown task preset 'nosuch'" in proc.stderr

    proc = run_cli("--task-preset", "chat", "--output", str(tmp_path / "w.json"))
    assert proc.returncode == 2 and "nothing to weight" in proc.stderr
    assert not (tmp_path / "w.json").exists()
