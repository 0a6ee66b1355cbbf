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

from llava.visatb.weights import measures, printout
from llava.visatb.weights import weights as weighting
from llava.visatb.weights.measures import contribution_matrix, difficulty, out_in_contributions, plan_tasks
from llava.visatb.weights.paper import PAPER_SETTINGS, get_paper_setting
from llava.visatb.weights.printout import plot_weights
from llava.visatb.weights.weights import weights_from_measures, weights_from_scores
from llava.visatb.weights.weights_file import load_visatb_weights_file, write_weights_file

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
    """The paper's weights (arXiv 2403.04343, Eq. 8 and the softmax weights it combines), written independently
    (plain softmax, no max subtraction)."""
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
        "task_order",
        "gain_tolerance",
        "max_contribution",
        "no_gain_tasks",
        "alpha",
        "temperature_rule",
        "temperature_candidates",
        "temperature_weight_range",
        "form",
        "difficulty_from",
        "task_groups",
        "group_weights",
    }
    assert data["task_groups"] is None and data["group_weights"] is None  # no groups
    assert data["no_gain_tasks"] == [] and data["gain_tolerance"] == 0.01 and data["max_contribution"] == 10.0
    assert data["alpha"] == {"out": 0.25, "in": 0.25, "difficulty": 0.5}
    assert data["temperature_rule"] == "given" and data["temperature_candidates"] is None
    assert data["form"] == "academic" and data["difficulty_from"] == "real"
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


def _softmax_scaled(values, t, n=None):
    e = [math.exp(v / t) for v in values]
    return [(n or len(values)) * x / sum(e) for x in e]


def test_task_without_own_gain_is_neutral_not_fatal():
    table = {k: dict(v) for k, v in SCORES.items()}
    table["B"]["B"] = table["mini"]["B"]  # B's own data adds nothing: 0.2 -> 0.2
    result = weights_from_scores(table, ["A", "B", "C"], temperature=0.5)
    assert [t.task for t in result.no_gain_tasks] == ["B"]
    assert result.no_gain_tasks[0].gain == 0.0
    # Column B undefined; the rest as in test_contribution_matrix_by_hand (own gains A 0.4, C 0.5).
    assert [row[1] for row in result.contribution_matrix] == [None, None, None]
    assert result.contribution_matrix[0][2] == pytest.approx(0.1)
    assert result.contribution_matrix[1][0] == pytest.approx(0.25)
    assert result.contribution_matrix[1][2] == pytest.approx(0.2)
    assert result.contribution_matrix[2][0] == pytest.approx(0.5)
    # C_out over defined targets only: A -> C 0.1; B -> A, C (0.25 + 0.2) / 2; C -> A 0.5.
    assert result.out_contribution == pytest.approx([0.1, 0.225, 0.5])
    assert result.in_contribution[0] == pytest.approx(0.375) and result.in_contribution[1] is None
    assert result.in_contribution[2] == pytest.approx(0.15)
    assert result.difficulty == pytest.approx([0.5, 0.0, 0.5])  # D_B = 1 - 0.2 / 0.2 is defined
    w_out = _softmax_scaled([0.1, 0.225, 0.5], 0.5)
    w_in_ac = _softmax_scaled([-0.375, -0.15], 0.5)  # over A and C, scaled to 2
    w_in = [w_in_ac[0], 1.0, w_in_ac[1]]
    w_d = _softmax_scaled([0.5, 0.0, 0.5], 0.5)
    final = [((o + i) / 2 + d) / 2 for o, i, d in zip(w_out, w_in, w_d)]
    assert result.weights["in"] == pytest.approx(w_in)
    assert result.weights["final"] == pytest.approx(final)
    assert sum(result.weights["final"]) == pytest.approx(3.0)
    assert result.warnings() and "task 'B'" in result.warnings()[0] and "no gain" in result.warnings()[0]
    assert result.to_json()["no_gain_tasks"][0]["task"] == "B"


def test_task_without_own_gain_is_an_error_when_strict():
    table = {k: dict(v) for k, v in SCORES.items()}
    table["B"]["B"] = table["mini"]["B"]
    with pytest.raises(ValueError, match=r"task 'B'.*no gain.*strict"):
        weights_from_scores(table, ["A", "B", "C"], strict=True)
    table["C"]["C"] = 0.45  # a negative gain (0.5 -> 0.45) is no gain either
    with pytest.raises(ValueError, match=r"task 'B'.*task 'C'.*negative gain"):
        weights_from_scores(table, ["A", "B", "C"], strict=True)


def test_gain_within_the_relative_tolerance_counts_as_none():
    table = {k: dict(v) for k, v in SCORES.items()}
    table["B"]["B"] = 0.2 * 1.005  # +0.5%: under the default 1% of the larger score
    assert [t.task for t in weights_from_scores(table, ["A", "B", "C"]).no_gain_tasks] == ["B"]
    table["B"]["B"] = 0.2 * 1.02 + 0.1  # clearly above the tolerance, |C| <= 10: defined
    assert weights_from_scores(table, ["A", "B", "C"]).no_gain_tasks == []
    # The tolerance is an option: 0 accepts any positive gain not blowing up a contribution.
    table["B"]["B"] = 0.2 * 1.005
    loose = weights_from_scores(table, ["A", "B", "C"], gain_tolerance=0.0, max_contribution=1e9)
    assert loose.no_gain_tasks == []


def test_near_zero_gain_that_would_blow_up_a_contribution_counts_as_none():
    table = {k: dict(v) for k, v in SCORES.items()}
    table["B"]["B"] = 0.2 + 1e-6  # with gain_tolerance 0, A's +0.1 on B would be C[A->B] = 1e5
    result = weights_from_scores(table, ["A", "B", "C"], gain_tolerance=0.0)
    assert [t.task for t in result.no_gain_tasks] == ["B"]
    assert "contribution of 1e+05" in result.no_gain_tasks[0].reason
    assert all(x is None or abs(x) <= 10 for row in result.contribution_matrix for x in row)
    assert max(result.visatb_weights) < 2.5


def test_a_noise_level_gain_never_drives_a_weight_above_2_5():
    rng = np.random.default_rng(0)
    tasks = ["T1", "T2", "T3", "T4", "T5"]
    for _ in range(200):
        mini = {t: float(rng.uniform(0.2, 0.8)) for t in tasks}
        table = {"mini": mini}
        for i in tasks:  # every model within +-0.03 of mini on the others: noise
            table[i] = {j: mini[j] + float(rng.uniform(-0.03, 0.03)) for j in tasks}
            table[i][i] = mini[i] + float(rng.uniform(0.1, 0.3))  # a real own gain
        noisy = tasks[int(rng.integers(5))]
        table[noisy][noisy] = mini[noisy] * (1 + float(rng.uniform(-0.01, 0.01)))  # noise-level own gain
        result = weights_from_scores(table, tasks)
        assert noisy in [t.task for t in result.no_gain_tasks]
        assert max(result.visatb_weights) <= 2.5
        assert sum(result.visatb_weights) == pytest.approx(5.0)


def test_zero_score_on_own_data_without_gain_leaves_difficulty_neutral():
    table = {k: dict(v) for k, v in SCORES.items()}
    table["mini"]["B"], table["B"]["B"] = 0.0, 0.0  # e.g. grounding at 0 for both
    result = weights_from_scores(table, ["A", "B", "C"])
    assert result.difficulty[1] is None and result.weights["difficulty"][1] == 1.0
    assert sum(result.weights["difficulty"]) == pytest.approx(3.0)


def test_gain_options_are_checked():
    with pytest.raises(ValueError, match="gain tolerance must be a number in"):
        weights_from_scores(SCORES, ["A", "B", "C"], gain_tolerance=1.5)
    with pytest.raises(ValueError, match="max contribution must be a positive number"):
        weights_from_scores(SCORES, ["A", "B", "C"], max_contribution=0)


def test_zero_full_data_score_is_named():
    table = {k: dict(v) for k, v in SCORES.items()}
    table["mini"]["C"], table["C"]["C"] = -0.1, 0.0  # an own gain of 0.1 would divide the ratio by 0
    with pytest.raises(ValueError, match=r"model key 'mini' on task 'C'.*score -0.1 is negative"):
        weights_from_scores(table, ["A", "B", "C"])
    table["mini"]["C"] = 0.0  # no gain: C's difficulty is left undefined (neutral), never divided by 0
    assert weights_from_scores(table, ["A", "B", "C"]).difficulty[2] is None


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


def test_cli_warns_about_a_task_without_gain_and_records_it(tmp_path):
    table = {k: dict(v) for k, v in SCORES.items()}
    table["B"]["B"] = table["mini"]["B"]
    scores, out = tmp_path / "scores.json", tmp_path / "weights.json"
    scores.write_text(json.dumps(table))
    proc = run_cli("--scores", str(scores), "--tasks", "A,B,C", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^WARNING: task 'B': its own data brought no gain", proc.stderr, flags=re.M)
    data = json.loads(out.read_text())
    assert [t["task"] for t in data["no_gain_tasks"]] == ["B"] and data["in_contribution"][1] is None
    assert proc.stdout.strip().splitlines()[-2] == 'TASK_NAMES="A,B,C"'
    strict = run_cli("--scores", str(scores), "--tasks", "A,B,C", "--strict", "--output", str(tmp_path / "s.json"))
    assert strict.returncode == 2 and "task 'B'" in strict.stderr and "Traceback" not in strict.stderr
    assert not (tmp_path / "s.json").exists()


def test_cli_states_the_task_order_beside_the_weights(tmp_path):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"mini": SCORES["mini"], "C": SCORES["C"], "A": SCORES["A"], "B": SCORES["B"]}))
    proc = run_cli("--scores", str(scores))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-2] == 'TASK_NAMES="A,B,C"' and "alphabetical" in lines[-3]
    assert "WARNING: no --tasks or --task-preset" in proc.stderr
    given = run_cli("--scores", str(scores), "--tasks", "C,B,A")
    assert given.stdout.strip().splitlines()[-2] == 'TASK_NAMES="C,B,A"' and "WARNING" not in given.stderr


@pytest.mark.parametrize("bad", [["--temperature", "0"], ["--temperature", "nan"], ["--temperature", "-1"],
                                 ["--gain-tolerance", "2"], ["--max-contribution", "-3"]])  # fmt: skip
def test_cli_refuses_bad_weighting_options(tmp_path, bad):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(SCORES))
    proc = run_cli("--scores", str(scores), "--tasks", "A,B,C", *bad)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and bad[0].lstrip("-").split("-")[0] in proc.stderr



# --- Eq. 8: the mix alpha of the three families ----------------------------------------------

# SCORES at T = 0.5 (see test_weights_from_scores_by_hand): the three families written out by hand.
HAND_OUT = _softmax_scaled([0.175, 0.225, 0.25], 0.5)
HAND_IN = _softmax_scaled([-0.375, -0.125, -0.15], 0.5)
HAND_DIFF = _softmax_scaled([0.5, 2 / 3, 0.5], 0.5)


def test_alpha_one_zero_zero_gives_exactly_the_out_family():
    result = weights_from_scores(SCORES, ["A", "B", "C"], alpha=(1, 0, 0))
    assert result.weights["final"] == result.weights["out"]
    assert result.visatb_weights == pytest.approx(HAND_OUT, rel=1e-12)
    assert weights_from_scores(SCORES, ["A", "B", "C"], alpha=(0, 1, 0)).weights["final"] == pytest.approx(
        HAND_IN
    )
    assert weights_from_scores(SCORES, ["A", "B", "C"], alpha=(0, 0, 1)).weights["final"] == pytest.approx(
        HAND_DIFF
    )


def test_alpha_mixes_the_families_linearly():
    result = weights_from_scores(SCORES, ["A", "B", "C"], alpha=(0.2, 0.3, 0.5))
    expected = [0.2 * o + 0.3 * i + 0.5 * d for o, i, d in zip(HAND_OUT, HAND_IN, HAND_DIFF)]
    assert result.weights["final"] == pytest.approx(expected, rel=1e-12)
    assert sum(result.weights["final"]) == pytest.approx(3.0)
    # The paper's inter family stays (w_out + w_in) / 2 whatever alpha is.
    assert result.weights["inter"] == pytest.approx([(o + i) / 2 for o, i in zip(HAND_OUT, HAND_IN)])
    assert result.to_json()["alpha"] == {"out": 0.2, "in": 0.3, "difficulty": 0.5}


def test_the_default_alpha_is_the_papers_quarter_quarter_half():
    default = weights_from_scores(SCORES, ["A", "B", "C"]).weights["final"]
    assert default == weights_from_scores(SCORES, ["A", "B", "C"], alpha=(0.25, 0.25, 0.5)).weights["final"]
    assert default == pytest.approx(
        [0.25 * o + 0.25 * i + 0.5 * d for o, i, d in zip(HAND_OUT, HAND_IN, HAND_DIFF)]
    )


@pytest.mark.parametrize(
    ("alpha", "message"),
    [((0.5, 0.5, 0.5), "alpha must sum to 1"), ((1.5, -0.5, 0.0), "alpha must be non-negative"),
     ((0.5, 0.5), "alpha must be three numbers"), ((float("nan"), 0.5, 0.5), "alpha must be three numbers")],
)  # fmt: skip
def test_bad_alpha_is_refused(alpha, message):
    with pytest.raises(ValueError, match=message):
        weights_from_scores(SCORES, ["A", "B", "C"], alpha=alpha)


def test_alpha_within_a_millionth_of_one_is_accepted():
    assert weighting.check_alpha((0.3333333, 0.3333333, 0.3333334)) == pytest.approx(
        (1 / 3, 1 / 3, 1 / 3), abs=1e-6
    )
    with pytest.raises(ValueError, match="sum to 1"):
        weighting.check_alpha((0.333, 0.333, 0.333))


# --- temperature auto ------------------------------------------------------------------------

# Two tasks. Own gains A 0.6 - 0.2 = 0.4, B 0.6 - 0.5 = 0.1. C[A->B] = (0.55 - 0.5) / 0.1 = 0.5,
# C[B->A] = (0.2 - 0.2) / 0.4 = 0; with two tasks C_out(A) = C_in(B) = 0.5 and C_out(B) = C_in(A) = 0.
# D_A = 1 - 0.2/0.6 = 2/3, D_B = 1 - 0.5/0.6 = 1/6. Each family is 2 softmax over a gap of 0.5 / T (C_in with
# a minus sign), i.e. w_A = 1 + tanh(0.5 / (2T)) in all three, so final_A = 1 + tanh(0.25 / T), final_B = 2 - final_A:
# T = 0.125: final_B = 1 - tanh(2) = 0.036, T = 0.25: 1 - tanh(1) = 0.238 (out); T = 0.5: 1 - tanh(0.5) = 0.538 (in).
AUTO_SCORES = {
    "mini": {"A": 0.2, "B": 0.5},
    "A": {"A": 0.6, "B": 0.55},
    "B": {"A": 0.2, "B": 0.6},
}


def test_auto_temperature_is_the_smallest_keeping_weights_in_half_to_two():
    result = weights_from_scores(AUTO_SCORES, ["A", "B"], temperature="auto")
    assert result.temperature == 0.5 and result.temperature_rule == "auto"
    e = math.e
    w_out = [2 * e / (e + 1), 2 / (e + 1)]  # exponents 0.5/0.5 = 1 and 0
    w_in = [2 / (1 + e**-1), 2 * e**-1 / (1 + e**-1)]  # exponents 0 and -0.5/0.5 = -1
    e_d = [math.exp((2 / 3) / 0.5), math.exp((1 / 6) / 0.5)]
    w_d = [2 * x / sum(e_d) for x in e_d]
    final = [0.25 * o + 0.25 * i + 0.5 * d for o, i, d in zip(w_out, w_in, w_d)]
    assert result.weights["final"] == pytest.approx(final, rel=1e-12)
    assert final == pytest.approx([1 + math.tanh(0.5), 1 - math.tanh(0.5)])
    candidates = result.to_json()["temperature_candidates"]
    assert list(candidates) == ["2", "1", "0.5", "0.25", "0.125"]
    assert [candidates[t]["in_range"] for t in candidates] == [True, True, True, False, False]
    for t in (2.0, 1.0, 0.5, 0.25, 0.125):
        assert candidates[f"{t:g}"]["min_weight"] == pytest.approx(1 - math.tanh(0.25 / t))
        assert candidates[f"{t:g}"]["max_weight"] == pytest.approx(1 + math.tanh(0.25 / t))
    assert result.temperature_note() == "temperature auto: chose T=0.5 (all weights in [0.5, 2.0])"
    assert result.warnings() == []


def test_auto_temperature_without_a_fitting_candidate_falls_back_to_two_with_a_warning():
    # Gaps of 10: final_A = 1 + tanh(5 / T); at T = 2, final_B = 1 - tanh(2.5) = 0.013.
    result = weights_from_measures([10.0, 0.0], [0.0, 10.0], [10.0, 0.0], ["A", "B"], temperature="auto")
    assert result.temperature == 2.0
    assert result.weights["final"] == pytest.approx([1 + math.tanh(2.5), 1 - math.tanh(2.5)])
    assert not any(c["in_range"] for c in result.temperature_choice.candidates.values())
    (warning,) = result.warnings()
    assert warning.startswith(
        "WARNING: temperature auto: no T of 2, 1, 0.5, 0.25, 0.125 keeps every final weight"
    )
    assert "using T=2" in warning


@pytest.mark.parametrize("name", ["academic-7b", "academic-13b", "chat"])
def test_auto_temperature_picks_the_papers_half_for_the_paper_settings(name):
    # arXiv 2403.04343: its temperature rule chose T = 0.5 for Academic 7B, 13B and Chat.
    assert get_paper_setting(name).weights("auto").temperature == 0.5


def test_temperature_option_reads_numbers_and_auto():
    assert weighting.temperature_option("auto") == "auto" and weighting.temperature_option(" AUTO ") == "auto"
    assert weighting.temperature_option("0.25") == 0.25 and weighting.temperature_option(1) == 1.0
    with pytest.raises(ValueError, match="positive number or 'auto', got 'hot'"):
        weighting.temperature_option("hot")
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        weighting.temperature_option("-1")


# --- precise difficulty (App. F) -------------------------------------------------------------

PRECISE_SCORES = {
    **SCORES,
    "alone:A": {"A": 0.70}, "mini-alone:A": {"A": 0.35},  # D_A = 1 - 0.35/0.70 = 0.5
    "alone:B": {"B": 0.50}, "mini-alone:B": {"B": 0.10},  # D_B = 1 - 0.10/0.50 = 0.8
    "alone:C": {"C": 0.80}, "mini-alone:C": {"C": 0.60},  # D_C = 1 - 0.60/0.80 = 0.25
}  # fmt: skip


def test_precise_difficulty_uses_the_alone_and_mini_alone_models():
    assert difficulty(PRECISE_SCORES, ["A", "B", "C"], difficulty_from="precise") == pytest.approx(
        [0.5, 0.8, 0.25]
    )
    assert difficulty(PRECISE_SCORES, ["A", "B", "C"]) == pytest.approx([0.5, 2 / 3, 0.5])  # real: unchanged
    result = weights_from_scores(PRECISE_SCORES, ["A", "B", "C"], difficulty_from="precise")
    assert result.difficulty == pytest.approx([0.5, 0.8, 0.25])
    assert result.out_contribution == pytest.approx([0.175, 0.225, 0.25])  # C is still the academic form's
    w_d = _softmax_scaled([0.5, 0.8, 0.25], 0.5)  # exponents 1.0, 1.6, 0.5
    final = [0.25 * o + 0.25 * i + 0.5 * d for o, i, d in zip(HAND_OUT, HAND_IN, w_d)]
    assert result.weights["difficulty"] == pytest.approx(w_d) and result.weights["final"] == pytest.approx(
        final
    )
    assert result.to_json()["difficulty_from"] == "precise" and result.to_json()["form"] == "academic"


def test_precise_difficulty_names_a_missing_model():
    table = {k: v for k, v in PRECISE_SCORES.items() if k != "mini-alone:B"}
    with pytest.raises(
        ValueError, match=r"no scores for model key 'mini-alone:B' \(the model trained on B's mini"
    ):
        weights_from_scores(table, ["A", "B", "C"], difficulty_from="precise")
    table = {k: v for k, v in PRECISE_SCORES.items() if k != "alone:C"}
    with pytest.raises(
        ValueError, match=r"no scores for model key 'alone:C' \(the model trained on C alone\)"
    ):
        weights_from_scores(table, ["A", "B", "C"], difficulty_from="precise")
    with pytest.raises(ValueError, match="unknown difficulty source 'exact'"):
        weights_from_scores(PRECISE_SCORES, ["A", "B", "C"], difficulty_from="exact")


# --- the Chat form (App. C) ------------------------------------------------------------------

# Models trained on one task alone against the untrained start. The mini and X-plus-mini rows hold other
# numbers: the chat form must not read them.
CHAT_SCORES = {
    "start": {"X": 0.10, "Y": 0.20, "Z": 0.30},
    "alone:X": {"X": 0.50, "Y": 0.30, "Z": 0.40},
    "alone:Y": {"X": 0.20, "Y": 0.60, "Z": 0.35},
    "alone:Z": {"X": 0.30, "Y": 0.25, "Z": 0.80},
    "mini-alone:X": {"X": 0.40},
    "mini-alone:Y": {"Y": 0.30},
    "mini-alone:Z": {"Z": 0.60},
    "mini": {"X": 0.9, "Y": 0.9, "Z": 0.9},
    "X": {"X": 0.1, "Y": 0.1, "Z": 0.1},
}
# Own gains V_j(alone:j) - V_j(start): X 0.4, Y 0.4, Z 0.5.
CHAT_MATRIX = [
    [None, (0.30 - 0.20) / 0.4, (0.40 - 0.30) / 0.5],  # X->Y 0.25, X->Z 0.2
    [(0.20 - 0.10) / 0.4, None, (0.35 - 0.30) / 0.5],  # Y->X 0.25, Y->Z 0.1
    [(0.30 - 0.10) / 0.4, (0.25 - 0.20) / 0.4, None],  # Z->X 0.5,  Z->Y 0.125
]
CHAT_OUT = [(0.25 + 0.2) / 2, (0.25 + 0.1) / 2, (0.5 + 0.125) / 2]  # 0.225, 0.175, 0.3125
CHAT_IN = [(0.25 + 0.5) / 2, (0.25 + 0.125) / 2, (0.2 + 0.1) / 2]  # 0.375, 0.1875, 0.15
CHAT_D = [1 - 0.40 / 0.50, 1 - 0.30 / 0.60, 1 - 0.60 / 0.80]  # 0.2, 0.5, 0.25


def chat_hand_weights(t, alpha=(0.25, 0.25, 0.5)):
    w_out = _softmax_scaled(CHAT_OUT, t)
    w_in = _softmax_scaled([-c for c in CHAT_IN], t)
    w_d = _softmax_scaled(CHAT_D, t)
    return [alpha[0] * o + alpha[1] * i + alpha[2] * d for o, i, d in zip(w_out, w_in, w_d)]


def test_chat_form_by_hand():
    result = weights_from_scores(CHAT_SCORES, ["X", "Y", "Z"], form="chat")
    for row, expected_row in zip(result.contribution_matrix, CHAT_MATRIX):
        assert row == pytest.approx(expected_row)
    assert result.out_contribution == pytest.approx([0.225, 0.175, 0.3125])
    assert result.in_contribution == pytest.approx([0.375, 0.1875, 0.15])
    assert result.difficulty == pytest.approx([0.2, 0.5, 0.25])  # the chat form's default: precise
    # T = 0.5: exponents C_out/T = 0.45, 0.35, 0.625; -C_in/T = -0.75, -0.375, -0.3; D/T = 0.4, 1.0, 0.5.
    e_out = [math.exp(0.45), math.exp(0.35), math.exp(0.625)]
    e_in = [math.exp(-0.75), math.exp(-0.375), math.exp(-0.3)]
    e_d = [math.exp(0.4), math.exp(1.0), math.exp(0.5)]
    final = [
        (3 * o / sum(e_out) + 3 * i / sum(e_in)) / 4 + 3 * d / sum(e_d) / 2
        for o, i, d in zip(e_out, e_in, e_d)
    ]
    assert result.weights["final"] == pytest.approx(final, rel=1e-12)
    assert final == pytest.approx(chat_hand_weights(0.5))
    data = result.to_json()
    assert data["form"] == "chat" and data["difficulty_from"] == "precise"


def test_chat_form_keeps_the_no_gain_rule_with_the_own_gain_over_start():
    table = {k: dict(v) for k, v in CHAT_SCORES.items()}
    table["alone:Y"]["Y"] = 0.20  # V_Y(alone:Y) = V_Y(start): no gain
    result = weights_from_scores(table, ["X", "Y", "Z"], form="chat")
    (entry,) = result.no_gain_tasks
    assert entry.task == "Y" and entry.gain == 0.0
    assert "V_Y(alone:Y) - V_Y(start) = 0.2 - 0.2 = 0" in entry.reason
    assert [row[1] for row in result.contribution_matrix] == [None, None, None]
    # C_out without column Y: X -> Z 0.2; Y -> X 0.25, Y -> Z (0.35 - 0.30) / 0.5 = 0.1; Z -> X 0.5.
    assert result.out_contribution == pytest.approx([0.2, (0.25 + 0.1) / 2, 0.5])
    assert result.in_contribution[1] is None and result.weights["in"][1] == 1.0
    assert result.difficulty[1] == pytest.approx(
        1 - 0.30 / 0.20
    )  # D_Y = 1 - V_Y(mini-alone:Y) / V_Y(alone:Y)
    with pytest.raises(ValueError, match=r"task 'Y'.*no gain.*strict"):
        weights_from_scores(table, ["X", "Y", "Z"], form="chat", strict=True)


@pytest.mark.parametrize(
    ("drop", "message"),
    [("start", r"no scores for model key 'start' \(the untrained starting model\)"),
     ("alone:Z", r"no scores for model key 'alone:Z' \(the model trained on Z alone\)"),
     ("mini-alone:X", r"no scores for model key 'mini-alone:X'")],
)  # fmt: skip
def test_chat_form_names_a_missing_model(drop, message):
    table = {k: v for k, v in CHAT_SCORES.items() if k != drop}
    with pytest.raises(ValueError, match=message):
        weights_from_scores(table, ["X", "Y", "Z"], form="chat")


def test_missing_scores_lists_every_model_a_form_needs():
    table = {k: v for k, v in CHAT_SCORES.items() if k not in ("alone:Y", "mini-alone:X")}
    assert measures.missing_scores(table, ["X", "Y", "Z"], form="chat") == {
        "alone:Y": ["X", "Y", "Z"], "mini-alone:X": ["X"]}  # fmt: skip
    assert measures.missing_scores(CHAT_SCORES, ["X", "Y", "Z"], form="chat") == {}
    assert measures.missing_scores(SCORES, ["A", "B"], difficulty_from="precise") == {
        "mini-alone:A": ["A"], "alone:A": ["A"], "mini-alone:B": ["B"], "alone:B": ["B"]}  # fmt: skip


def test_chat_form_finds_its_tasks_in_the_table():
    assert plan_tasks(None, None, scores=CHAT_SCORES, form="chat") == (["X", "Y", "Z"], ["X", "Y", "Z"])
    with pytest.raises(
        ValueError, match=r"fewer than two tasks have both a 'start' score and a model trained"
    ):
        plan_tasks(None, None, scores=SCORES, form="chat")


# --- the new CLI flags -----------------------------------------------------------------------


def test_cli_chat_form_alpha_and_temperature_are_recorded(tmp_path):
    scores, out = tmp_path / "scores.json", tmp_path / "weights.json"
    scores.write_text(json.dumps(CHAT_SCORES))
    proc = run_cli("--scores", str(scores), "--tasks", "X,Y,Z", "--form", "chat", "--alpha", "0.5", "0.25", "0.25",
                   "--temperature", "1", "--output", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["visatb_weights"] == pytest.approx(chat_hand_weights(1.0, (0.5, 0.25, 0.25)), rel=1e-12)
    assert data["alpha"] == {"out": 0.5, "in": 0.25, "difficulty": 0.25}
    assert (data["form"], data["difficulty_from"], data["temperature"], data["temperature_rule"]) == (
        "chat", "precise", 1.0, "given")  # fmt: skip
    assert "Form chat: C[i->j] = (V_j(alone:i) - V_j(start)) / (V_j(alone:j) - V_j(start))" in proc.stdout
    assert "alpha 0.5/0.25/0.25" in proc.stdout


def test_cli_temperature_auto_prints_and_records_the_choice(tmp_path):
    scores, out = tmp_path / "scores.json", tmp_path / "weights.json"
    scores.write_text(json.dumps(AUTO_SCORES))
    proc = run_cli("--scores", str(scores), "--tasks", "A,B", "--temperature", "auto", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "temperature auto: chose T=0.5 (all weights in [0.5, 2.0])" in proc.stdout
    data = json.loads(out.read_text())
    assert data["temperature"] == 0.5 and data["temperature_rule"] == "auto"
    assert data["temperature_weight_range"] == [0.5, 2.0]
    assert data["temperature_candidates"]["0.25"]["in_range"] is False
    assert data["visatb_weights"] == pytest.approx([1 + math.tanh(0.5), 1 - math.tanh(0.5)])


def test_cli_precise_difficulty(tmp_path):
    scores, out = tmp_path / "scores.json", tmp_path / "weights.json"
    scores.write_text(json.dumps(PRECISE_SCORES))
    proc = run_cli(
        "--scores", str(scores), "--tasks", "A,B,C", "--difficulty-from", "precise", "--output", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["difficulty"] == pytest.approx([0.5, 0.8, 0.25]) and data["difficulty_from"] == "precise"


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--alpha", "0.5", "0.5", "0.5"], "--alpha: alpha must sum to 1"),
     (["--alpha", "1", "-0.5", "0.5"], "--alpha: alpha must be non-negative"),
     (["--temperature", "hot"], "positive number or 'auto'"),
     (["--form", "chat"], "no scores for model key 'start'")],
)  # fmt: skip
def test_cli_refuses_bad_new_flags(tmp_path, flags, message):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(SCORES))
    proc = run_cli("--scores", str(scores), "--tasks", "A,B,C", *flags)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- task groups

# Groups G1 = A, B and G2 = C, D; E is trained but not scored. By hand, the group means:
#   mini: G1 (0.2 + 0.4) / 2 = 0.3, G2 (10 + 20) / 2 = 15;  G1 row: 0.7, 17;  G2 row: 0.4, 45.
# Own gains 0.4 and 30: C[G1->G2] = (17 - 15) / 30 = 1/15, C[G2->G1] = (0.4 - 0.3) / 0.4 = 1/4;
# D_G1 = 1 - 0.3 / 0.7 = 4/7, D_G2 = 1 - 15 / 45 = 2/3.
GROUP_SCORES = {
    "mini": {"A": 0.2, "B": 0.4, "C": 10.0, "D": 20.0},
    "G1": {"A": 0.6, "B": 0.8, "C": 12.0, "D": 22.0},
    "G2": {"A": 0.3, "B": 0.5, "C": 40.0, "D": 50.0},
}
GROUPS = {"G1": ["A", "B"], "G2": ["C", "D"]}


def _two_softmax(a: float, b: float, temperature: float = 0.5) -> list[float]:
    ea, eb = math.exp(a / temperature), math.exp(b / temperature)
    return [2 * ea / (ea + eb), 2 * eb / (ea + eb)]


def test_group_weights_by_hand_and_every_task_gets_its_groups_weight():
    result = weighting.weights_from_group_scores(GROUP_SCORES, GROUPS, ["A", "B", "C", "D", "E"])
    assert result.scored_tasks == ["G1", "G2"] and result.tasks == ["A", "B", "C", "D", "E"]
    assert result.contribution_matrix[0][1] == pytest.approx(1 / 15)
    assert result.contribution_matrix[1][0] == pytest.approx(1 / 4)
    assert result.difficulty == pytest.approx([4 / 7, 2 / 3])
    w_out = _two_softmax(1 / 15, 1 / 4)  # a larger out-contribution weighs more
    w_in = _two_softmax(-1 / 4, -1 / 15)  # a larger in-contribution weighs less
    w_diff = _two_softmax(4 / 7, 2 / 3)
    final = [0.25 * o + 0.25 * i + 0.5 * d for o, i, d in zip(w_out, w_in, w_diff)]
    assert result.weights["final"] == pytest.approx(final)
    assert result.visatb_weights == pytest.approx([final[0], final[0], final[1], final[1], 1.0])
    assert result.unscored_tasks == ["E"]
    data = result.to_json()
    assert data["task_groups"] == GROUPS and data["group_weights"] == pytest.approx(dict(zip(GROUPS, final)))
    text = printout.format_report(result)
    assert "N = 2 groups" in text and "G1 = A, B; G2 = C, D" in text
    assert 'TASK_NAMES="A,B,C,D,E"' in text


def test_group_weights_cli_and_errors(tmp_path):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(GROUP_SCORES))
    out = tmp_path / "weights.json"
    done = run_cli("--scores", str(scores), "--tasks", "A,B,C,D,E", "--unscored-tasks", "E",
                   "--task-groups", "G1=A,B;G2=C,D", "--output", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    weights = json.loads(out.read_text())
    assert weights["tasks"] == ["A", "B", "C", "D", "E"] and weights["visatb_weights"][4] == 1.0
    assert weights["visatb_weights"][0] == weights["visatb_weights"][1] != weights["visatb_weights"][2]
    assert load_visatb_weights_file(out, ["A", "B", "C", "D", "E"]) == weights["visatb_weights"]
    missing = run_cli("--scores", str(scores), "--tasks", "A,B,C,D,E", "--unscored-tasks", "E",
                      "--task-groups", "G1=A,B;G2=C")  # fmt: skip
    assert missing.returncode == 2 and "scored task(s) D are in no group" in missing.stderr
    mixed = run_cli("--scores", str(scores), "--tasks", "A,B,C,D", "--task-groups", "G1=A,B;G2=C,D;G3=E")
    assert mixed.returncode == 2 and "E not among the scored tasks" in mixed.stderr
    no_row = dict(GROUP_SCORES)
    del no_row["G2"]
    scores.write_text(json.dumps(no_row))
    absent = run_cli("--scores", str(scores), "--tasks", "A,B,C,D", "--task-groups", "G1=A,B;G2=C,D")
    assert absent.returncode == 2 and "'G2'" in absent.stderr


def test_group_means_leave_out_models_missing_a_task():
    from llava.visatb.scores import group_scores

    table = {"m": {"A": 1.0, "B": 3.0, "C": 5.0}, "n": {"A": 2.0}}
    assert group_scores(table, {"G1": ["A", "B"], "G2": ["C"]}) == {"m": {"G1": 2.0, "G2": 5.0}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("G1=A,B", "at least two groups"),
        ("G1=A;G1=B", "group 'G1' is given twice"),
        ("G1=A,B;G2=B", "task 'B' is in group 'G1' and in group 'G2'"),
        ("G1;G2=B", "is not GROUP=TASK"),
        ("", "no groups"),
    ],
)
def test_task_group_syntax_errors(text, message):
    from llava.visatb.tasks import parse_task_groups

    with pytest.raises(ValueError, match=re.escape(message)):
        parse_task_groups(text)
