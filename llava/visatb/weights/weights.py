"""VisATB's weights: tempered softmax weights from the measures (llava/visatb/weights/measures.py).

Final weight (Eq. 8): a_out * w_out + a_in * w_in + a_D * w_diff, `alpha` = (a_out, a_in, a_D), by default
the paper's (0.25, 0.25, 0.5); w_inter = (w_out + w_in) / 2 is reported as the paper's inter-task weight.
Temperature "auto": the smallest T of 2, 1, 0.5, 0.25, 0.125 whose final weights all lie in [0.5, 2.0]
(the paper's rule); when none does, T = 2 with a WARNING. A task without own-data gain (measures.py's
docstring) gets the neutral in-contribution weight 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llava.visatb.defaults import DEFAULT_ALPHA, DEFAULT_TEMPERATURE
from llava.visatb.scores import group_scores
from llava.visatb.weights.measures import (
    DEFAULT_GAIN_TOLERANCE,
    DEFAULT_MAX_CONTRIBUTION,
    NoGainTask,
    check_scored_tasks,
    check_scores_table,
    contribution_matrix,
    difficulty,
    find_no_gain_tasks,
    get_difficulty_source,
    get_form,
    model_label,
    out_in_contributions,
    required_models,
    score_of,
)

AUTO = "auto"
AUTO_TEMPERATURES = (2.0, 1.0, 0.5, 0.25, 0.125)
AUTO_WEIGHT_RANGE = (0.5, 2.0)
AUTO_FALLBACK_TEMPERATURE = 2.0
WEIGHT_FAMILIES = ("out", "in", "inter", "difficulty", "final")


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
    check_scored_tasks(scored_tasks)
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
    scored_tasks = check_scored_tasks(scored_tasks)
    _all_tasks(scored_tasks, tasks)
    temperature = temperature_option(temperature)
    alpha = check_alpha(alpha)
    contribution_form = get_form(form)
    source_of_d = get_difficulty_source(difficulty_from, form)
    check_scores_table(scores, source)
    absent = [m for m in required_models(scored_tasks, form, source_of_d.name) if m not in scores]
    if absent:
        what = "; ".join(f"no scores for model key {m!r} ({model_label(m)})" for m in absent)
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
        if task in undefined and score_of(scores, source_of_d.full_model(task), task, source) == 0:
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
