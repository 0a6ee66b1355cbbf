"""VisATB task weights: inter-task contribution and intra-task difficulty from validation scores.

V_j(m) is model m's score on task j's validation set; models are the mini model (key `mini`) and
each task's task-plus-mini model (key = task name). See the method doc, section 1.

A task without own-data gain. C[i->j] divides by task j's own gain g_j = V_j(j+mini) - V_j(mini). When
g_j is zero, negative, at most `gain_tolerance` (default 1%) of the larger of the two scores, or so small
that some source's difference would give |C[i->j]| > `max_contribution` (default 10), the column of j is
noise over noise: it is left undefined (None), out of every C_out mean, C_in(j) is undefined and task j
gets the neutral in-contribution weight 1.0 (the softmax runs over the other tasks and is scaled to their
number, so the family still sums to N). D_j and C_out(j) stay as defined. A WARNING names the task, and
weights.json records it (`no_gain_tasks`); `strict=True` makes it an error instead.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llava.utils import atomic_write_json, load_json
from llava.visatb.tasks import ACADEMIC, CHAT, PRESETS

MINI = "mini"
DEFAULT_TEMPERATURE = 0.5
DEFAULT_GAIN_TOLERANCE = 0.01
DEFAULT_MAX_CONTRIBUTION = 10.0
WEIGHT_FAMILIES = ("out", "in", "inter", "difficulty", "final")


# ---------------------------------------------------------------------------------------------
# Validation scores -> contributions and difficulty


def _model_label(model: str) -> str:
    return "the mini model" if model == MINI else f"the {model}-plus-mini model"


def _score(scores: Mapping[str, Any], model: str, task: str, source: str) -> float:
    """V_task(model), with an error naming the model and task when it is missing or not a finite number."""
    if model not in scores:
        raise ValueError(
            f"{source}: no scores for model key {model!r} ({_model_label(model)}); "
            f"its score on task {task!r} is needed"
        )
    row = scores[model]
    if not isinstance(row, Mapping):
        raise ValueError(
            f"{source}: model key {model!r} must map task names to scores, got {type(row).__name__}"
        )
    if task not in row:
        raise ValueError(
            f"{source}: model key {model!r} ({_model_label(model)}) has no score on task {task!r}"
        )
    value = row[task]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(
            f"{source}: score of model key {model!r} on task {task!r} is {value!r}, not a finite number"
        )
    return float(value)


def _check_scores_table(scores: Any, source: str) -> None:
    if not isinstance(scores, Mapping):
        raise ValueError(
            f"{source}: a scores table is a JSON object {{model key: {{task: score}}}}, "
            f"got {type(scores).__name__}"
        )


def _check_scored_tasks(tasks: Sequence[str]) -> list[str]:
    tasks = list(tasks)
    if len(tasks) < 2:
        raise ValueError(
            f"VisATB needs at least two scored tasks (contributions are between tasks), got {len(tasks)}: "
            f"{', '.join(tasks) or 'none'}"
        )
    dupes = sorted({t for t in tasks if tasks.count(t) > 1})
    if dupes:
        raise ValueError(f"scored tasks list {', '.join(dupes)} more than once")
    return tasks


@dataclass(frozen=True)
class NoGainTask:
    """A scored task whose own data brought no usable gain: V_j(j+mini) - V_j(mini) at or below the tolerance."""

    task: str
    gain: float
    tolerance: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "gain": self.gain, "tolerance": self.tolerance, "reason": self.reason}

    def message(self) -> str:
        return (
            f"task {self.task!r}: {self.reason}; contributions to it are undefined and left out of the means, "
            f"its in-contribution weight is neutral (1.0)"
        )


def own_gains(
    scores: Mapping[str, Mapping[str, float]], tasks: Sequence[str], source: str = "scores"
) -> dict[str, float]:
    """g_j = V_j(j+mini) - V_j(mini): what task j's own data adds to the mini model on task j."""
    _check_scores_table(scores, source)
    return {j: _score(scores, j, j, source) - _score(scores, MINI, j, source) for j in _check_scored_tasks(tasks)}


def check_gain_options(gain_tolerance: float, max_contribution: float) -> None:
    """Validate the two thresholds of the no-gain rule (errors name the option)."""
    if isinstance(gain_tolerance, bool) or not isinstance(gain_tolerance, int | float) or not (
        math.isfinite(gain_tolerance) and 0 <= gain_tolerance < 1
    ):
        raise ValueError(f"gain tolerance must be a number in [0, 1), got {gain_tolerance!r}")
    if isinstance(max_contribution, bool) or not isinstance(max_contribution, int | float) or not (
        max_contribution > 0
    ):
        raise ValueError(f"max contribution must be a positive number, got {max_contribution!r}")


def find_no_gain_tasks(
    scores: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str],
    source: str = "scores",
    gain_tolerance: float = DEFAULT_GAIN_TOLERANCE,
    max_contribution: float = DEFAULT_MAX_CONTRIBUTION,
) -> list[NoGainTask]:
    """Scored tasks whose own-data gain cannot carry contributions (the rule is in the module docstring)."""
    check_gain_options(gain_tolerance, max_contribution)
    tasks = _check_scored_tasks(tasks)
    gains = own_gains(scores, tasks, source)
    found = []
    for j in tasks:
        full, mini = _score(scores, j, j, source), _score(scores, MINI, j, source)
        tolerance = gain_tolerance * max(abs(full), abs(mini))
        gain = gains[j]
        if gain <= 0 or gain <= tolerance:
            what = "no gain" if gain == 0 else ("a negative gain" if gain < 0 else "a gain within the tolerance")
            reason = (
                f"its own data brought {what} (V_{j}({j}+mini) - V_{j}(mini) = {full:.6g} - {mini:.6g} = "
                f"{gain:.3g}, tolerance {tolerance:.3g} = {gain_tolerance:g} x the larger score)"
            )
            found.append(NoGainTask(j, gain, tolerance, reason))
            continue
        deltas = [(i, _score(scores, i, j, source) - mini) for i in tasks if i != j]
        source_task, delta = max(deltas, key=lambda pair: abs(pair[1]))
        if abs(delta) > max_contribution * gain:
            reason = (
                f"its own-data gain {gain:.3g} is too small to divide by: the {source_task}-plus-mini model moves it "
                f"by {delta:.3g}, a contribution of {delta / gain:.3g} (limit {max_contribution:g})"
            )
            found.append(NoGainTask(j, gain, tolerance, reason))
    return found


def contribution_matrix(
    scores: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str],
    source: str = "scores",
    undefined_targets: Sequence[str] = (),
) -> list[list[float | None]]:
    """C[i][j] = (V_j(i+mini) - V_j(mini)) / (V_j(j+mini) - V_j(mini)); rows are sources.

    The diagonal, and the columns of `undefined_targets` (tasks without own-data gain), are None.
    """
    _check_scores_table(scores, source)
    tasks = _check_scored_tasks(tasks)
    gains = own_gains(scores, tasks, source)
    for j in tasks:
        if j not in undefined_targets and gains[j] == 0:
            raise ValueError(
                f"{source}: task {j!r}'s own data brought no gain (V_{j}({j}+mini) == V_{j}(mini) = "
                f"{_score(scores, MINI, j, source)!r}), so contributions to it are undefined; "
                f"check the {j}-plus-mini model and its evaluation"
            )
    matrix: list[list[float | None]] = []
    for i in tasks:
        row: list[float | None] = []
        for j in tasks:
            if i == j or j in undefined_targets:
                row.append(None)
            else:
                row.append((_score(scores, i, j, source) - _score(scores, MINI, j, source)) / gains[j])
        matrix.append(row)
    return matrix


def _mean_defined(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def out_in_contributions(
    matrix: Sequence[Sequence[float | None]],
) -> tuple[list[float | None], list[float | None]]:
    """C_out(i): mean of row i over the defined entries off the diagonal; C_in(j): the same over column j.

    An undefined column (a task without own-data gain) gives C_in None and is left out of every C_out mean.
    """
    n = len(matrix)
    if n < 2 or any(len(row) != n for row in matrix):
        raise ValueError(f"a contribution matrix must be square with at least 2 tasks, got {n} rows")
    c_out = [_mean_defined([matrix[i][j] for j in range(n) if j != i]) for i in range(n)]
    c_in = [_mean_defined([matrix[i][j] for i in range(n) if i != j]) for j in range(n)]
    return c_out, c_in


def difficulty(
    scores: Mapping[str, Mapping[str, float]], tasks: Sequence[str], source: str = "scores"
) -> list[float]:
    """D_i = 1 - V_i(mini) / V_i(i+mini): how much of task i's full-data score the mini data misses."""
    _check_scores_table(scores, source)
    values = []
    for i in tasks:
        full = _score(scores, i, i, source)
        if full == 0:
            raise ValueError(
                f"{source}: V_{i}({i}+mini) is 0 (model key {i!r} on task {i!r}), so the difficulty of "
                f"{i!r} is undefined"
            )
        values.append(1.0 - _score(scores, MINI, i, source) / full)
    return values


# ---------------------------------------------------------------------------------------------
# Measures -> weights


def softmax(values: Sequence[float]) -> np.ndarray:
    """Softmax that subtracts the maximum first, so large measures or small temperatures cannot overflow."""
    x = np.asarray(values, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def _check_vector(name: str, values: Sequence[float | None], allow_undefined: bool = False) -> list[float | None]:
    out: list[float | None] = []
    for k, v in enumerate(values):
        if v is None and allow_undefined:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{name}[{k}] is {v!r}, not a finite number")
        out.append(float(v))
    return out


def check_temperature(temperature: float) -> float:
    """The softmax temperature as a float; anything but a positive finite number is an error."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    return float(temperature)


def _family(values: Sequence[float | None], sign: float, temperature: float) -> np.ndarray:
    """n_defined * softmax(sign * v / T) over the defined entries; an undefined entry gets the neutral 1.0."""
    weights = np.ones(len(values))
    defined = [k for k, v in enumerate(values) if v is not None]
    if defined:
        x = sign * np.asarray([values[k] for k in defined], dtype=np.float64) / temperature
        weights[defined] = len(defined) * softmax(x)
    return weights


def weight_families(
    out_contribution: Sequence[float | None],
    in_contribution: Sequence[float | None],
    difficulty: Sequence[float | None],
    temperature: float = DEFAULT_TEMPERATURE,
) -> dict[str, list[float]]:
    """The five weight families over the scored tasks; each sums to N (None entries: neutral 1.0)."""
    vectors = {
        "out contribution": _check_vector("out contribution", out_contribution, allow_undefined=True),
        "in contribution": _check_vector("in contribution", in_contribution, allow_undefined=True),
        "difficulty": _check_vector("difficulty", difficulty, allow_undefined=True),
    }
    lengths = {name: len(v) for name, v in vectors.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            "the vectors must have one value per scored task, but their lengths differ: "
            + ", ".join(f"{name} {n}" for name, n in lengths.items())
        )
    n = lengths["difficulty"]
    if n < 2:
        raise ValueError(f"VisATB needs at least two scored tasks, got {n} value(s) per vector")
    t = check_temperature(temperature)
    w_out = _family(vectors["out contribution"], 1.0, t)
    # Tasks that receive little from the others get more weight: note the minus sign.
    w_in = _family(vectors["in contribution"], -1.0, t)
    w_diff = _family(vectors["difficulty"], 1.0, t)
    w_inter = (w_out + w_in) / 2
    w_final = (w_inter + w_diff) / 2
    families = {"out": w_out, "in": w_in, "inter": w_inter, "difficulty": w_diff, "final": w_final}
    return {name: [float(x) for x in w] for name, w in families.items()}


@dataclass
class VisatbWeights:
    """Everything the weighting produces; `visatb_weights` is over all tasks (unscored ones get 1.0)."""

    tasks: list[str]
    temperature: float
    scored_tasks: list[str]
    contribution_matrix: list[list[float | None]] | None
    out_contribution: list[float | None]
    in_contribution: list[float | None]
    difficulty: list[float | None]
    weights: dict[str, list[float]]
    visatb_weights: list[float] = field(default_factory=list)
    no_gain_tasks: list[NoGainTask] = field(default_factory=list)
    gain_tolerance: float = DEFAULT_GAIN_TOLERANCE
    max_contribution: float = DEFAULT_MAX_CONTRIBUTION
    task_order: str = "given"

    @property
    def unscored_tasks(self) -> list[str]:
        return [t for t in self.tasks if t not in self.scored_tasks]

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "temperature": self.temperature,
            "scored_tasks": list(self.scored_tasks),
            "contribution_matrix": self.contribution_matrix,
            "out_contribution": list(self.out_contribution),
            "in_contribution": list(self.in_contribution),
            "difficulty": list(self.difficulty),
            "weights": {name: list(self.weights[name]) for name in WEIGHT_FAMILIES},
            "visatb_weights": list(self.visatb_weights),
            "task_order": self.task_order,
            "gain_tolerance": self.gain_tolerance,
            "max_contribution": self.max_contribution,
            "no_gain_tasks": [t.to_json() for t in self.no_gain_tasks],
        }

    def warnings(self) -> list[str]:
        """One WARNING line per task without own-data gain."""
        return [f"WARNING: {t.message()}" for t in self.no_gain_tasks]

    def weights_string(self, decimals: int = 4) -> str:
        """The weights as the finetune scripts take them: space-separated, in task-id order."""
        return " ".join(f"{w:.{decimals}f}" for w in self.visatb_weights)


def _all_tasks(scored_tasks: Sequence[str], tasks: Sequence[str] | None) -> list[str]:
    if tasks is None:
        return list(scored_tasks)
    tasks = list(tasks)
    missing = [t for t in scored_tasks if t not in tasks]
    if missing:
        raise ValueError(f"scored task(s) {', '.join(missing)} are not in the task list ({', '.join(tasks)})")
    return tasks


def weights_from_measures(
    out_contribution: Sequence[float | None],
    in_contribution: Sequence[float | None],
    difficulty: Sequence[float | None],
    scored_tasks: Sequence[str],
    tasks: Sequence[str] | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    contribution_matrix: list[list[float | None]] | None = None,
) -> VisatbWeights:
    """Weights from C_out, C_in and D given by hand (D as the paper defines it, not 1 - D)."""
    scored_tasks = list(scored_tasks)
    families = weight_families(out_contribution, in_contribution, difficulty, temperature)
    if len(scored_tasks) != len(families["final"]):
        raise ValueError(
            f"{len(families['final'])} values per vector but {len(scored_tasks)} scored tasks "
            f"({', '.join(scored_tasks)})"
        )
    _check_scored_tasks(scored_tasks)
    all_tasks = _all_tasks(scored_tasks, tasks)
    final = dict(zip(scored_tasks, families["final"]))
    return VisatbWeights(
        tasks=all_tasks,
        temperature=float(temperature),
        scored_tasks=scored_tasks,
        contribution_matrix=contribution_matrix,
        out_contribution=[None if x is None else float(x) for x in out_contribution],
        in_contribution=[None if x is None else float(x) for x in in_contribution],
        difficulty=[None if x is None else float(x) for x in difficulty],
        weights=families,
        visatb_weights=[final.get(t, 1.0) for t in all_tasks],
    )


def weights_from_scores(
    scores: Mapping[str, Mapping[str, float]],
    scored_tasks: Sequence[str],
    tasks: Sequence[str] | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    source: str = "scores",
    gain_tolerance: float = DEFAULT_GAIN_TOLERANCE,
    max_contribution: float = DEFAULT_MAX_CONTRIBUTION,
    strict: bool = False,
) -> VisatbWeights:
    """The whole computation from a scores table; tasks in `tasks` but not scored get weight 1.0.

    Tasks without own-data gain get the neutral treatment of the module docstring, or, with `strict`,
    a ValueError naming them.
    """
    scored_tasks = _check_scored_tasks(scored_tasks)
    _all_tasks(scored_tasks, tasks)
    check_temperature(temperature)
    no_gain = find_no_gain_tasks(scores, scored_tasks, source, gain_tolerance, max_contribution)
    if strict and no_gain:
        problems = "; ".join(f"task {t.task!r}: {t.reason}" for t in no_gain)
        raise ValueError(f"{source}: {problems} (strict mode; without it such a task gets a neutral weight)")
    undefined = [t.task for t in no_gain]
    matrix = contribution_matrix(scores, scored_tasks, source, undefined_targets=undefined)
    c_out, c_in = out_in_contributions(matrix)
    d: list[float | None] = []
    for task in scored_tasks:
        if task in undefined and _score(scores, task, task, source) == 0:
            d.append(None)  # 0 on its own full data: the ratio is undefined, so neutral as well
        else:
            d.extend(difficulty(scores, [task], source))
    result = weights_from_measures(c_out, c_in, d, scored_tasks, tasks, temperature, contribution_matrix=matrix)
    result.no_gain_tasks = no_gain
    result.gain_tolerance = float(gain_tolerance)
    result.max_contribution = float(max_contribution)
    return result


def load_scores_table(path: str | os.PathLike) -> dict[str, Any]:
    """Read a scores table ({model key: {task: score}}); entries are validated where they are used."""
    scores = load_json(path)
    _check_scores_table(scores, str(path))
    return scores


def scored_tasks_in_table(scores: Mapping[str, Any]) -> list[str]:
    """Tasks with both a mini score and a task-plus-mini model in the table, sorted by name."""
    mini = scores.get(MINI)
    if not isinstance(mini, Mapping):
        return []
    return sorted(
        k for k, row in scores.items() if k != MINI and k in mini and isinstance(row, Mapping) and row
    )


def default_unscored(tasks: Sequence[str]) -> list[str]:
    """Tasks that a known preset trains but does not score (Academic's text-only ShareGPT)."""
    unscored = {t for preset in PRESETS.values() for t in preset.unscored}
    return [t for t in tasks if t in unscored]


def split_scored(tasks: Sequence[str], unscored: Sequence[str]) -> list[str]:
    """The scored tasks of `tasks`, in order; every unscored name must be one of the tasks."""
    unknown = [t for t in unscored if t not in tasks]
    if unknown:
        raise ValueError(
            f"unscored task(s) {', '.join(unknown)} are not in the task list ({', '.join(tasks)})"
        )
    return [t for t in tasks if t not in unscored]


def plan_tasks(
    tasks: Sequence[str] | None,
    unscored: Sequence[str] | None = None,
    scores: Mapping[str, Any] | None = None,
    n_values: int | None = None,
    source: str = "scores",
) -> tuple[list[str], list[str]]:
    """(all tasks in weight order, scored tasks) from a task list or, without one, the table or vector length.

    `unscored=None` means the default: a preset's unscored tasks (Academic's ShareGPT) found in `tasks`.
    """
    if tasks is not None:
        tasks = list(tasks)
        unscored = default_unscored(tasks) if unscored is None else list(unscored)
        return tasks, split_scored(tasks, unscored)
    unscored = list(unscored or [])
    if scores is not None:
        scored = scored_tasks_in_table(scores)
        if len(scored) < 2:
            raise ValueError(
                f"{source}: fewer than two tasks have both a 'mini' score and a task-plus-mini model "
                f"(found: {', '.join(scored) or 'none'}); pass --tasks or --task-preset to name them"
            )
    elif n_values is not None:
        scored = [f"task{k + 1}" for k in range(n_values)]
    else:
        raise ValueError("no tasks: give a task list, a scores table or the measure vectors")
    overlap = [t for t in unscored if t in scored]
    if overlap:
        raise ValueError(f"task(s) {', '.join(overlap)} are listed as unscored but have scores")
    return scored + unscored, scored


# ---------------------------------------------------------------------------------------------
# The weights file read by training


def write_weights_file(path: str | os.PathLike, result: VisatbWeights) -> None:
    """Write the JSON that training's `--visatb_weights_file` reads (atomically)."""
    atomic_write_json(path, result.to_json())


def load_visatb_weights_file(path: str | os.PathLike, tasks: Sequence[str] | None) -> list[float]:
    """The `visatb_weights` of a weights JSON; its `tasks` must equal the training task list, in order."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a weights file is a JSON object, got {type(data).__name__}")
    for key in ("tasks", "visatb_weights"):
        if not isinstance(data.get(key), list):
            raise ValueError(
                f"{path}: field {key!r} is missing or not a list (write it with weighting_visatb.py)"
            )
    file_tasks, weights = data["tasks"], data["visatb_weights"]
    if len(file_tasks) != len(weights):
        raise ValueError(f"{path}: {len(file_tasks)} tasks but {len(weights)} values in 'visatb_weights'")
    for task, w in zip(file_tasks, weights):
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{path}: weight of task {task!r} is {w!r}, not a finite non-negative number")
    if tasks is not None and list(file_tasks) != list(tasks):
        raise ValueError(
            f"{path}: the weights are for tasks [{', '.join(map(str, file_tasks))}] but training uses "
            f"[{', '.join(tasks)}] (names and order must match); recompute them with weighting_visatb.py "
            f"--tasks/--task-preset set as for training"
        )
    return [float(w) for w in weights]


# ---------------------------------------------------------------------------------------------
# The paper's settings (vectors from the paper and its reference release)


@dataclass(frozen=True)
class PaperSetting:
    """C_out, C_in and the release's ratio V_i(mini)/V_i(i+mini) (= 1 - D) over a preset's scored tasks."""

    name: str
    title: str
    tasks: tuple[str, ...]
    unscored: tuple[str, ...]
    out_contribution: tuple[float, ...]
    in_contribution: tuple[float, ...]
    mini_ratio: tuple[float, ...]

    @property
    def difficulty(self) -> list[float]:
        return [1.0 - r for r in self.mini_ratio]

    def weights(self, temperature: float = DEFAULT_TEMPERATURE) -> VisatbWeights:
        scored = [t for t in self.tasks if t not in self.unscored]
        result = weights_from_measures(
            self.out_contribution, self.in_contribution, self.difficulty, scored, self.tasks, temperature
        )
        result.task_order = f"the paper's {self.name} order"
        return result


PAPER_SETTINGS: dict[str, PaperSetting] = {
    s.name: s
    for s in (
        PaperSetting(
            name="academic-7b",
            title="Academic benchmark, Vicuna-7B",
            tasks=ACADEMIC.tasks,
            unscored=ACADEMIC.unscored,
            out_contribution=(0.1637, 0.1903, 0.1952, 0.1433, 0.0768, 0.1316, 0.1582),
            in_contribution=(0.1634, 0.2179, 0.1326, 0.1775, 0.1674, 0.0783, 0.1219),
            mini_ratio=(0.7597, 0.5313, 0.8852, 0.7979, 0.5511, 0.8680, 0.1904),
        ),
        PaperSetting(
            name="academic-13b",
            title="Academic benchmark, Vicuna-13B",
            tasks=ACADEMIC.tasks,
            unscored=ACADEMIC.unscored,
            out_contribution=(0.1885, 0.2192, 0.1561, 0.1390, 0.0409, 0.1519, 0.1248),
            in_contribution=(0.0551, 0.2067, 0.1497, 0.2181, 0.1392, 0.0702, 0.1813),
            mini_ratio=(0.6814, 0.5744, 0.8916, 0.8065, 0.5705, 0.8715, 0.1247),
        ),
        PaperSetting(
            name="chat",
            title="Chat benchmark (LLaVA-Instruct), Vicuna-7B",
            tasks=CHAT.tasks,
            unscored=CHAT.unscored,
            out_contribution=(0.7601, 0.3496, 1.6727),
            in_contribution=(1.2890, 0.9779, 0.5156),
            mini_ratio=(0.8636, 0.3534, 0.9593),
        ),
    )
}


def get_paper_setting(name: str) -> PaperSetting:
    """A paper setting by name; an unknown name lists the known ones."""
    try:
        return PAPER_SETTINGS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown paper setting {name!r}; known settings: {', '.join(PAPER_SETTINGS)}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Reports


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def format_report(result: VisatbWeights) -> str:
    """A readable report: C matrix (when known), measures, the five weight families, the weights line."""
    lines = []
    names = result.scored_tasks
    width = max(len(t) for t in result.tasks) + 5
    if result.contribution_matrix is not None:
        lines.append("Inter-task contribution C[source -> target] (rows: source, columns: target):")
        header = " " * width + "".join(f"{f'[{j + 1}]':>9}" for j in range(len(names)))
        lines.append(header)
        for i, row in enumerate(result.contribution_matrix):
            label = f"[{i + 1}] {names[i]}"
            lines.append(f"{label:<{width}}" + "".join(f"{_fmt(x):>9}" for x in row))
        lines.append("")
    columns = ("C_out", "C_in", "D", "w_out", "w_in", "w_inter", "w_diff", "w_final")
    lines.append(f"Measures and weights (temperature {result.temperature:g}, N = {len(names)} scored tasks):")
    lines.append(f"{'task':<{width}}" + "".join(f"{c:>9}" for c in columns))
    w = result.weights
    for k, task in enumerate(names):
        values = (
            result.out_contribution[k],
            result.in_contribution[k],
            result.difficulty[k],
            w["out"][k],
            w["in"][k],
            w["inter"][k],
            w["difficulty"][k],
            w["final"][k],
        )
        lines.append(f"{task:<{width}}" + "".join(f"{_fmt(v):>9}" for v in values))
    sums = "".join(f"{sum(w[f]):>9.4f}" for f in ("out", "in", "inter", "difficulty", "final"))
    lines.append(f"{'sum':<{width}}" + " " * 27 + sums)
    if result.unscored_tasks:
        lines.append(f"Trained but not scored (weight 1.0): {', '.join(result.unscored_tasks)}")
    lines.append(f"Task order of the weights ({result.task_order}): {', '.join(result.tasks)}")
    lines.append(f'TASK_NAMES="{",".join(result.tasks)}"')
    lines.append(f'VISATB_WEIGHTS="{result.weights_string()}"')
    return "\n".join(lines)


def plot_weights(result: VisatbWeights, path: str | os.PathLike) -> None:
    """PNG: heatmap of C (or, given by hand, bars of C_out, C_in, D) beside a bar chart of the final weights."""
    # The object-oriented API with an Agg canvas needs no display and leaves pyplot's global state alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(result.scored_tasks)
    fig = Figure(figsize=(6 + 0.9 * n + 0.5 * len(result.tasks), 3 + 0.6 * n))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    names = result.scored_tasks
    if result.contribution_matrix is not None:
        c = np.array([[np.nan if x is None else x for x in row] for row in result.contribution_matrix])
        image = left.imshow(np.ma.masked_invalid(c), cmap="RdYlGn")
        fig.colorbar(image, ax=left, fraction=0.046, pad=0.04)
        for i in range(n):
            for j in range(n):
                if i != j:
                    text = "n/a" if np.isnan(c[i, j]) else f"{c[i, j]:.2f}"
                    left.text(j, i, text, ha="center", va="center", fontsize=8)
        left.set_xticks(range(n), names, rotation=45, ha="right")
        left.set_yticks(range(n), names)
        left.set_xlabel("target task j")
        left.set_ylabel("source task i")
        left.set_title("inter-task contribution C[i -> j]")
    else:
        x = np.arange(n)
        for k, (label, values) in enumerate(
            (("C_out", result.out_contribution), ("C_in", result.in_contribution), ("D", result.difficulty))
        ):
            left.bar(x + (k - 1) * 0.27, values, width=0.27, label=label)
        left.set_xticks(x, names, rotation=45, ha="right")
        left.legend()
        left.set_title("measures (given by hand)")
    final = result.visatb_weights
    colors = ["tab:blue" if t in names else "tab:gray" for t in result.tasks]
    bars = right.bar(range(len(final)), final, color=colors)
    right.bar_label(bars, labels=[f"{w:.2f}" for w in final], fontsize=8)
    right.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    right.set_xticks(range(len(final)), result.tasks, rotation=45, ha="right")
    right.set_ylabel("weight")
    right.set_title(f"VisATB final weights (T = {result.temperature:g}; grey: unscored)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    _atomic_write_bytes(path, buffer.getvalue())


def _atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def format_paper_settings(temperature: float = DEFAULT_TEMPERATURE) -> str:
    """The weights of every paper setting, as the reference release's script prints them, one block each."""
    blocks = []
    for setting in PAPER_SETTINGS.values():
        title = f"== {setting.title} (paper setting {setting.name!r}) =="
        blocks.append(title + "\n" + format_report(setting.weights(temperature)))
    return "\n\n".join(blocks)
