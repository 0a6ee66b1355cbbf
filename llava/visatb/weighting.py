"""VisATB task weights: inter-task contribution and intra-task difficulty from validation scores.

V_j(m) is model m's score on task j's validation set; the model keys are those of llava/visatb/scores.py.
See the method doc, sections 1 and 8.

Forms of the contribution (`form`): C[i->j] = (V_j(model_i) - V_j(ref)) / (V_j(model_j) - V_j(ref)), with
- academic (default): model_i = the task-plus-mini model (key `i`), ref = the mini model (`mini`);
- chat (App. C): model_i = the model trained on i alone (`alone:i`), ref = the starting model (`start`).
Difficulty (`difficulty_from`): D_i = 1 - V_i(small_i) / V_i(full_i), with
- real (the academic form's default): small_i = `mini`, full_i = the task-plus-mini model `i`;
- precise (App. F; the chat form's default): small_i = `mini-alone:i`, full_i = `alone:i`.
Final weight (Eq. 8): a_out * w_out + a_in * w_in + a_D * w_diff, `alpha` = (a_out, a_in, a_D), by default
the paper's (0.25, 0.25, 0.5); w_inter = (w_out + w_in) / 2 is reported as the paper's inter-task weight.
Temperature "auto": the smallest T of 2, 1, 0.5, 0.25, 0.125 whose final weights all lie in [0.5, 2.0]
(the paper's rule); when none does, T = 2 with a WARNING.

A task without own-data gain. C[i->j] divides by task j's own gain g_j = V_j(model_j) - V_j(ref). When
g_j is zero, negative, at most `gain_tolerance` (default 1%) of the larger of the two scores, or so small
that some source's difference would give |C[i->j]| > `max_contribution` (default 10), the column of j is
noise over noise: it is left undefined (None), out of every C_out mean, C_in(j) is undefined and task j
gets the neutral in-contribution weight 1.0 (the softmax runs over the other tasks and is scaled to their
number, so the family still sums to N). D_j and C_out(j) stay as defined (D_j is neutral too when its
denominator V_j(full_j) is 0). A WARNING names the task, and
weights.json records it (`no_gain_tasks`); `strict=True` makes it an error instead.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llava.utils import atomic_write_bytes, atomic_write_json, load_json
from llava.visatb.scores import ALONE_PREFIX, MINI, MINI_ALONE_PREFIX, START, group_scores
from llava.visatb.tasks import ACADEMIC, CHAT, PRESETS

DEFAULT_TEMPERATURE = 0.5
DEFAULT_GAIN_TOLERANCE = 0.01
DEFAULT_MAX_CONTRIBUTION = 10.0
DEFAULT_ALPHA = (0.25, 0.25, 0.5)
AUTO = "auto"
AUTO_TEMPERATURES = (2.0, 1.0, 0.5, 0.25, 0.125)
AUTO_WEIGHT_RANGE = (0.5, 2.0)
AUTO_FALLBACK_TEMPERATURE = 2.0
WEIGHT_FAMILIES = ("out", "in", "inter", "difficulty", "final")


# ---------------------------------------------------------------------------------------------
# Which models the measures compare


@dataclass(frozen=True)
class ContributionForm:
    """C[i->j] compares each task's model (`prefix` + task) with one reference model, on every task."""

    name: str
    reference: str
    prefix: str
    default_difficulty: str
    model_description: str

    def model(self, task: str) -> str:
        return self.prefix + task


@dataclass(frozen=True)
class DifficultySource:
    """D_i = 1 - V_i(small model of i) / V_i(full model of i)."""

    name: str
    small_prefix: str | None  # None: the one mini model for every task
    full_prefix: str

    def small_model(self, task: str) -> str:
        return MINI if self.small_prefix is None else self.small_prefix + task

    def full_model(self, task: str) -> str:
        return self.full_prefix + task


FORMS = {
    "academic": ContributionForm("academic", MINI, "", "real", "a task-plus-mini model (key: the task)"),
    "chat": ContributionForm("chat", START, ALONE_PREFIX, "precise", "a model trained alone (alone:<task>)"),
}
DIFFICULTY_SOURCES = {
    "real": DifficultySource("real", None, ""),
    "precise": DifficultySource("precise", MINI_ALONE_PREFIX, ALONE_PREFIX),
}


def get_form(name: str) -> ContributionForm:
    """A contribution form by name (academic, chat); an unknown name lists the known ones."""
    if name not in FORMS:
        raise ValueError(f"unknown contribution form {name!r}; known forms: {', '.join(FORMS)}")
    return FORMS[name]


def get_difficulty_source(name: str | None, form: str = "academic") -> DifficultySource:
    """A difficulty source by name (real, precise); None: the form's default."""
    name = get_form(form).default_difficulty if name is None else name
    if name not in DIFFICULTY_SOURCES:
        raise ValueError(f"unknown difficulty source {name!r}; known: {', '.join(DIFFICULTY_SOURCES)}")
    return DIFFICULTY_SOURCES[name]


def required_models(
    tasks: Sequence[str], form: str = "academic", difficulty_from: str | None = None
) -> dict[str, list[str]]:
    """{model key: the tasks it must be scored on} for a form and difficulty source."""
    contribution, source = get_form(form), get_difficulty_source(difficulty_from, form)
    needed: dict[str, list[str]] = {}

    def need(model: str, task: str) -> None:
        if task not in needed.setdefault(model, []):
            needed[model].append(task)

    for model in (contribution.reference, *(contribution.model(i) for i in tasks)):
        for task in tasks:
            need(model, task)
    for task in tasks:
        need(source.small_model(task), task)
        need(source.full_model(task), task)
    return needed


def missing_scores(
    scores: Mapping[str, Any],
    tasks: Sequence[str],
    form: str = "academic",
    difficulty_from: str | None = None,
) -> dict[str, list[str]]:
    """{model key: tasks without a score} over what `required_models` needs; empty when nothing is missing."""
    missing = {}
    for model, needed in required_models(tasks, form, difficulty_from).items():
        row = scores.get(model)
        absent = [t for t in needed if not isinstance(row, Mapping) or t not in row]
        if absent:
            missing[model] = absent
    return missing


# ---------------------------------------------------------------------------------------------
# Validation scores -> contributions and difficulty


def _model_label(model: str) -> str:
    if model == MINI:
        return "the mini model"
    if model == START:
        return "the untrained starting model"
    if model.startswith(MINI_ALONE_PREFIX):
        return f"the model trained on {model[len(MINI_ALONE_PREFIX):]}'s mini subset alone"
    if model.startswith(ALONE_PREFIX):
        return f"the model trained on {model[len(ALONE_PREFIX):]} alone"
    return f"the {model}-plus-mini model"


def _notation(model: str) -> str:
    """How a model appears in V_j(...): `i+mini` for a task-plus-mini model, its key otherwise."""
    if model in (MINI, START) or model.startswith((ALONE_PREFIX, MINI_ALONE_PREFIX)):
        return model
    return f"{model}+mini"


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
    """A scored task whose own data brought no usable gain: V_j(model_j) - V_j(ref) at or below the tolerance."""

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
    scores: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str],
    source: str = "scores",
    form: str = "academic",
) -> dict[str, float]:
    """g_j = V_j(model_j) - V_j(ref): what task j's own data adds on task j (academic: V_j(j+mini) - V_j(mini))."""
    _check_scores_table(scores, source)
    f = get_form(form)
    return {
        j: _score(scores, f.model(j), j, source) - _score(scores, f.reference, j, source)
        for j in _check_scored_tasks(tasks)
    }


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
    form: str = "academic",
) -> list[NoGainTask]:
    """Scored tasks whose own-data gain cannot carry contributions (the rule is in the module docstring)."""
    check_gain_options(gain_tolerance, max_contribution)
    tasks = _check_scored_tasks(tasks)
    f = get_form(form)
    gains = own_gains(scores, tasks, source, form)
    found = []
    for j in tasks:
        full, ref = _score(scores, f.model(j), j, source), _score(scores, f.reference, j, source)
        tolerance = gain_tolerance * max(abs(full), abs(ref))
        gain = gains[j]
        if gain <= 0 or gain <= tolerance:
            what = "no gain" if gain == 0 else ("a negative gain" if gain < 0 else "a gain within the tolerance")
            reason = (
                f"its own data brought {what} (V_{j}({_notation(f.model(j))}) - V_{j}({_notation(f.reference)}) = "
                f"{full:.6g} - {ref:.6g} = {gain:.3g}, tolerance {tolerance:.3g} = {gain_tolerance:g} x the larger score)"
            )
            found.append(NoGainTask(j, gain, tolerance, reason))
            continue
        deltas = [(i, _score(scores, f.model(i), j, source) - ref) for i in tasks if i != j]
        source_task, delta = max(deltas, key=lambda pair: abs(pair[1]))
        if abs(delta) > max_contribution * gain:
            reason = (
                f"its own-data gain {gain:.3g} is too small to divide by: {_model_label(f.model(source_task))} moves "
                f"it by {delta:.3g}, a contribution of {delta / gain:.3g} (limit {max_contribution:g})"
            )
            found.append(NoGainTask(j, gain, tolerance, reason))
    return found


def contribution_matrix(
    scores: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str],
    source: str = "scores",
    undefined_targets: Sequence[str] = (),
    form: str = "academic",
) -> list[list[float | None]]:
    """C[i][j] = (V_j(model_i) - V_j(ref)) / (V_j(model_j) - V_j(ref)); rows are sources.

    Academic form: (V_j(i+mini) - V_j(mini)) / (V_j(j+mini) - V_j(mini)); chat form (App. C):
    (V_j(alone:i) - V_j(start)) / (V_j(alone:j) - V_j(start)). The diagonal, and the columns of
    `undefined_targets` (tasks without own-data gain), are None.
    """
    _check_scores_table(scores, source)
    tasks = _check_scored_tasks(tasks)
    f = get_form(form)
    gains = own_gains(scores, tasks, source, form)
    for j in tasks:
        if j not in undefined_targets and gains[j] == 0:
            raise ValueError(
                f"{source}: task {j!r}'s own data brought no gain (V_{j}({_notation(f.model(j))}) == "
                f"V_{j}({_notation(f.reference)}) = {_score(scores, f.reference, j, source)!r}), so contributions to "
                f"it are undefined; check {_model_label(f.model(j))} and its evaluation"
            )
    matrix: list[list[float | None]] = []
    for i in tasks:
        row: list[float | None] = []
        for j in tasks:
            if i == j or j in undefined_targets:
                row.append(None)
            else:
                delta = _score(scores, f.model(i), j, source) - _score(scores, f.reference, j, source)
                row.append(delta / gains[j])
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
    scores: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str],
    source: str = "scores",
    difficulty_from: str = "real",
) -> list[float]:
    """D_i = 1 - V_i(small_i) / V_i(full_i): how much of task i's full-data score the small data misses.

    real: 1 - V_i(mini) / V_i(i+mini); precise (App. F): 1 - V_i(mini-alone:i) / V_i(alone:i).
    """
    _check_scores_table(scores, source)
    d = get_difficulty_source(difficulty_from)
    values = []
    for i in tasks:
        full = _score(scores, d.full_model(i), i, source)
        if full == 0:
            raise ValueError(
                f"{source}: V_{i}({_notation(d.full_model(i))}) is 0 (model key {d.full_model(i)!r} on task {i!r}), "
                f"so the difficulty of {i!r} is undefined"
            )
        values.append(1.0 - _score(scores, d.small_model(i), i, source) / full)
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


def temperature_option(value: float | str) -> float | str:
    """A temperature as the command lines take it: a positive number, or "auto" (the paper's rule)."""
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return AUTO
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"temperature must be a positive number or {AUTO!r}, got {value!r}") from None
    return check_temperature(value)


def check_alpha(alpha: Sequence[float]) -> tuple[float, float, float]:
    """(a_out, a_in, a_D) of Eq. 8: three non-negative numbers summing to 1 (within 1e-6), rescaled to sum 1."""
    values = list(alpha)
    if len(values) != 3 or any(
        isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a) for a in values
    ):
        raise ValueError(f"alpha must be three numbers a_out a_in a_D, got {alpha!r}")
    if any(a < 0 for a in values):
        raise ValueError(f"alpha must be non-negative, got {' '.join(f'{a:g}' for a in values)}")
    total = sum(values)
    if abs(total - 1) > 1e-6:
        raise ValueError(f"alpha must sum to 1, got {' + '.join(f'{a:g}' for a in values)} = {total:g}")
    return (values[0] / total, values[1] / total, values[2] / total)


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
    alpha: Sequence[float] = DEFAULT_ALPHA,
) -> dict[str, list[float]]:
    """The five weight families over the scored tasks; each sums to N (None entries: neutral 1.0).

    final = a_out * w_out + a_in * w_in + a_D * w_diff (Eq. 8); inter = (w_out + w_in) / 2, the paper's.
    """
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
    a_out, a_in, a_diff = check_alpha(alpha)
    w_out = _family(vectors["out contribution"], 1.0, t)
    # Tasks that receive little from the others get more weight: note the minus sign.
    w_in = _family(vectors["in contribution"], -1.0, t)
    w_diff = _family(vectors["difficulty"], 1.0, t)
    w_inter = (w_out + w_in) / 2
    w_final = (a_out * w_out + a_in * w_in) + a_diff * w_diff
    families = {"out": w_out, "in": w_in, "inter": w_inter, "difficulty": w_diff, "final": w_final}
    return {name: [float(x) for x in w] for name, w in families.items()}


@dataclass(frozen=True)
class TemperatureChoice:
    """The auto rule's pick and, per candidate T, the range of the final weights."""

    temperature: float
    candidates: dict[str, dict[str, Any]]
    in_range: bool


def choose_temperature(
    out_contribution: Sequence[float | None],
    in_contribution: Sequence[float | None],
    difficulty: Sequence[float | None],
    alpha: Sequence[float] = DEFAULT_ALPHA,
) -> TemperatureChoice:
    """The smallest T of AUTO_TEMPERATURES whose final weights all lie in AUTO_WEIGHT_RANGE, else T = 2."""
    low, high = AUTO_WEIGHT_RANGE
    candidates: dict[str, dict[str, Any]] = {}
    fitting = []
    for t in AUTO_TEMPERATURES:
        final = weight_families(out_contribution, in_contribution, difficulty, t, alpha)["final"]
        in_range = low <= min(final) and max(final) <= high
        candidates[f"{t:g}"] = {"min_weight": min(final), "max_weight": max(final), "in_range": in_range}
        if in_range:
            fitting.append(t)
    if fitting:
        return TemperatureChoice(min(fitting), candidates, True)
    return TemperatureChoice(AUTO_FALLBACK_TEMPERATURE, candidates, False)


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
    alpha: tuple[float, float, float] = DEFAULT_ALPHA
    temperature_rule: str = "given"
    temperature_choice: TemperatureChoice | None = None
    form: str | None = None  # None: measures given by hand
    difficulty_from: str | None = None
    groups: dict[str, list[str]] | None = None  # with task groups, `scored_tasks` are the group names

    @property
    def unscored_tasks(self) -> list[str]:
        if self.groups:
            grouped = {t for members in self.groups.values() for t in members}
            return [t for t in self.tasks if t not in grouped]
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
            "alpha": dict(zip(("out", "in", "difficulty"), self.alpha)),
            "temperature_rule": self.temperature_rule,
            "temperature_candidates": self.temperature_choice.candidates if self.temperature_choice else None,
            "temperature_weight_range": list(AUTO_WEIGHT_RANGE) if self.temperature_choice else None,
            "form": self.form,
            "difficulty_from": self.difficulty_from,
            "task_groups": {g: list(m) for g, m in self.groups.items()} if self.groups else None,
            "group_weights": dict(zip(self.scored_tasks, self.weights["final"])) if self.groups else None,
        }

    def temperature_note(self) -> str | None:
        """What the auto temperature rule chose, or None for a given temperature."""
        choice = self.temperature_choice
        if choice is None:
            return None
        low, high = AUTO_WEIGHT_RANGE
        if choice.in_range:
            return f"temperature auto: chose T={choice.temperature:g} (all weights in [{low}, {high}])"
        return f"temperature auto: chose T={choice.temperature:g} (no candidate keeps all weights in [{low}, {high}])"

    def warnings(self) -> list[str]:
        """One WARNING line per task without own-data gain, and one when no auto temperature fits."""
        lines = [f"WARNING: {t.message()}" for t in self.no_gain_tasks]
        choice = self.temperature_choice
        if choice is not None and not choice.in_range:
            low, high = AUTO_WEIGHT_RANGE
            lines.append(
                f"WARNING: temperature auto: no T of {', '.join(choice.candidates)} keeps every final weight in "
                f"[{low}, {high}]; using T={choice.temperature:g}, whose weights range from "
                f"{min(self.weights['final']):.4f} to {max(self.weights['final']):.4f}"
            )
        return lines

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
    temperature: float | str = DEFAULT_TEMPERATURE,
    contribution_matrix: list[list[float | None]] | None = None,
    alpha: Sequence[float] = DEFAULT_ALPHA,
) -> VisatbWeights:
    """Weights from C_out, C_in and D given by hand (D as the paper defines it, not 1 - D).

    `temperature` "auto" picks T by the paper's rule (see `choose_temperature`).
    """
    scored_tasks = list(scored_tasks)
    temperature = temperature_option(temperature)
    alpha = check_alpha(alpha)
    choice = None
    if temperature == AUTO:
        choice = choose_temperature(out_contribution, in_contribution, difficulty, alpha)
        temperature = choice.temperature
    families = weight_families(out_contribution, in_contribution, difficulty, temperature, alpha)
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
        alpha=alpha,
        temperature_rule="given" if choice is None else AUTO,
        temperature_choice=choice,
    )


def weights_from_scores(
    scores: Mapping[str, Mapping[str, float]],
    scored_tasks: Sequence[str],
    tasks: Sequence[str] | None = None,
    temperature: float | str = DEFAULT_TEMPERATURE,
    source: str = "scores",
    gain_tolerance: float = DEFAULT_GAIN_TOLERANCE,
    max_contribution: float = DEFAULT_MAX_CONTRIBUTION,
    strict: bool = False,
    alpha: Sequence[float] = DEFAULT_ALPHA,
    form: str = "academic",
    difficulty_from: str | None = None,
) -> VisatbWeights:
    """The whole computation from a scores table; tasks in `tasks` but not scored get weight 1.0.

    `form` (academic, chat) chooses the models of C, `difficulty_from` (real, precise; None: the form's
    default) those of D, `alpha` the mix of Eq. 8; see the module docstring. Tasks without own-data gain
    get the neutral treatment of the module docstring, or, with `strict`, a ValueError naming them.
    """
    scored_tasks = _check_scored_tasks(scored_tasks)
    _all_tasks(scored_tasks, tasks)
    temperature = temperature_option(temperature)
    alpha = check_alpha(alpha)
    contribution_form = get_form(form)
    source_of_d = get_difficulty_source(difficulty_from, form)
    _check_scores_table(scores, source)
    absent = [m for m in required_models(scored_tasks, form, source_of_d.name) if m not in scores]
    if absent:
        what = "; ".join(f"no scores for model key {m!r} ({_model_label(m)})" for m in absent)
        raise ValueError(
            f"{source}: {what} (the {contribution_form.name} form with {source_of_d.name} difficulty needs them)"
        )
    no_gain = find_no_gain_tasks(scores, scored_tasks, source, gain_tolerance, max_contribution, form)
    if strict and no_gain:
        problems = "; ".join(f"task {t.task!r}: {t.reason}" for t in no_gain)
        raise ValueError(f"{source}: {problems} (strict mode; without it such a task gets a neutral weight)")
    undefined = [t.task for t in no_gain]
    matrix = contribution_matrix(scores, scored_tasks, source, undefined_targets=undefined, form=form)
    c_out, c_in = out_in_contributions(matrix)
    d: list[float | None] = []
    for task in scored_tasks:
        if task in undefined and _score(scores, source_of_d.full_model(task), task, source) == 0:
            d.append(None)  # 0 on its own full data: the ratio is undefined, so neutral as well
        else:
            d.extend(difficulty(scores, [task], source, source_of_d.name))
    result = weights_from_measures(
        c_out, c_in, d, scored_tasks, tasks, temperature, contribution_matrix=matrix, alpha=alpha
    )
    result.form = contribution_form.name
    result.difficulty_from = source_of_d.name
    result.no_gain_tasks = no_gain
    result.gain_tolerance = float(gain_tolerance)
    result.max_contribution = float(max_contribution)
    return result


def weights_from_group_scores(
    scores: Mapping[str, Mapping[str, float]],
    groups: Mapping[str, Sequence[str]],
    tasks: Sequence[str] | None = None,
    source: str = "scores",
    **options: Any,
) -> VisatbWeights:
    """Weights of task groups (M3IT's setting): the measures and weights of `weights_from_scores` over the
    group-level table (each group's score is the mean of its tasks' scores, `scores.group_scores`, and the
    preparation models are keyed by group), then every task trains with its group's weight; tasks in no
    group get 1.0. `tasks` is the training task list (default: the groups' tasks in order)."""
    groups = {g: list(m) for g, m in groups.items()}
    members = [t for m in groups.values() for t in m]
    all_tasks = list(tasks) if tasks is not None else members
    missing = [t for t in members if t not in all_tasks]
    if missing:
        raise ValueError(
            f"grouped task(s) {', '.join(missing)} are not in the task list ({', '.join(all_tasks)})"
        )
    absent = sorted(
        {t for t in members if not any(t in row for row in scores.values() if isinstance(row, Mapping))}
    )
    if absent:
        raise ValueError(f"{source}: no scores at all for grouped task(s) {', '.join(absent)}")
    table = group_scores({k: v for k, v in scores.items() if isinstance(v, Mapping)}, groups)
    result = weights_from_scores(table, list(groups), None, source=f"{source} (group means)", **options)
    final = dict(zip(result.scored_tasks, result.weights["final"]))
    group_of = {t: g for g, m in groups.items() for t in m}
    result.tasks = all_tasks
    result.groups = groups
    result.visatb_weights = [final[group_of[t]] if t in group_of else 1.0 for t in all_tasks]
    return result


def load_scores_table(path: str | os.PathLike) -> dict[str, Any]:
    """Read a scores table ({model key: {task: score}}); entries are validated where they are used."""
    scores = load_json(path)
    _check_scores_table(scores, str(path))
    return scores


def scored_tasks_in_table(scores: Mapping[str, Any], form: str = "academic") -> list[str]:
    """Tasks with both a score of the form's reference model and a model of their own, sorted by name.

    Academic: a `mini` score and a task-plus-mini model; chat: a `start` score and an `alone:<task>` model.
    """
    f = get_form(form)
    reference = scores.get(f.reference)
    if not isinstance(reference, Mapping):
        return []
    return sorted(
        k[len(f.prefix) :]
        for k, row in scores.items()
        if k.startswith(f.prefix)
        and k != f.reference
        and k[len(f.prefix) :] in reference
        and isinstance(row, Mapping)
        and row
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
    form: str = "academic",
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
        scored = scored_tasks_in_table(scores, form)
        if len(scored) < 2:
            f = get_form(form)
            raise ValueError(
                f"{source}: fewer than two tasks have both a {f.reference!r} score and {f.model_description} "
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

    def weights(
        self, temperature: float | str = DEFAULT_TEMPERATURE, alpha: Sequence[float] = DEFAULT_ALPHA
    ) -> VisatbWeights:
        scored = [t for t in self.tasks if t not in self.unscored]
        measures = (self.out_contribution, self.in_contribution, self.difficulty)
        result = weights_from_measures(*measures, scored, self.tasks, temperature, alpha=alpha)
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


def _measures_line(result: VisatbWeights) -> str:
    """The formulas of C and D the result was computed with, in terms of the scores table's keys."""
    f, d = get_form(result.form), get_difficulty_source(result.difficulty_from, result.form)
    model_i, model_j, ref = _notation(f.model("i")), _notation(f.model("j")), _notation(f.reference)
    return (
        f"Form {f.name}: C[i->j] = (V_j({model_i}) - V_j({ref})) / (V_j({model_j}) - V_j({ref})); "
        f"difficulty {d.name}: D_i = 1 - V_i({_notation(d.small_model('i'))}) / V_i({_notation(d.full_model('i'))})"
    )


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
    if result.form is not None:
        lines.append(_measures_line(result))
    note = result.temperature_note()
    if note:
        ranges = "; ".join(
            f"T={t}: {c['min_weight']:.4f} to {c['max_weight']:.4f}{'' if c['in_range'] else ' (outside)'}"
            for t, c in result.temperature_choice.candidates.items()
        )
        lines += [note, f"  final weights per candidate: {ranges}"]
    columns = ("C_out", "C_in", "D", "w_out", "w_in", "w_inter", "w_diff", "w_final")
    alpha = "/".join(f"{a:g}" for a in result.alpha)
    unit = "groups" if result.groups else "scored tasks"
    if result.groups:
        lines.append("Task groups (a group's score is the mean of its tasks' scores; its tasks share its weight): "
                     + "; ".join(f"{g} = {', '.join(m)}" for g, m in result.groups.items()))  # fmt: skip
    lines.append(
        f"Measures and weights (temperature {result.temperature:g}, alpha {alpha}, N = {len(names)} {unit}):"
    )
    lines.append(f"{'group' if result.groups else 'task':<{width}}" + "".join(f"{c:>9}" for c in columns))
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
    atomic_write_bytes(path, buffer.getvalue())


def format_paper_settings(
    temperature: float | str = DEFAULT_TEMPERATURE, alpha: Sequence[float] = DEFAULT_ALPHA
) -> str:
    """The weights of every paper setting, as the reference release's script prints them, one block each."""
    blocks = []
    for setting in PAPER_SETTINGS.values():
        title = f"== {setting.title} (paper setting {setting.name!r}) =="
        blocks.append(title + "\n" + format_report(setting.weights(temperature, alpha)))
    return "\n\n".join(blocks)
