"""VisATB's measures: inter-task contribution and intra-task difficulty from validation scores.

V_j(m) is model m's score on task j's validation set; the model keys are those of llava/visatb/scores.py.

Forms of the contribution (`form`): C[i->j] = (V_j(model_i) - V_j(ref)) / (V_j(model_j) - V_j(ref)), with
- academic (default): model_i = the task-plus-mini model (key `i`), ref = the mini model (`mini`);
- chat (App. C): model_i = the model trained on i alone (`alone:i`), ref = the starting model (`start`).
Difficulty (`difficulty_from`): D_i = 1 - V_i(small_i) / V_i(full_i), with
- real (the academic form's default): small_i = `mini`, full_i = the task-plus-mini model `i`;
- precise (App. F; the chat form's default): small_i = `mini-alone:i`, full_i = `alone:i`.

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

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llava.utils import load_json
from llava.visatb.defaults import DEFAULT_GAIN_TOLERANCE, DEFAULT_MAX_CONTRIBUTION
from llava.visatb.scores import ALONE_PREFIX, MINI, MINI_ALONE_PREFIX, START, score_problem
from llava.visatb.tasks import PRESETS

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


def model_label(model: str) -> str:
    if model == MINI:
        return "the mini model"
    if model == START:
        return "the untrained starting model"
    if model.startswith(MINI_ALONE_PREFIX):
        return f"the model trained on {model[len(MINI_ALONE_PREFIX):]}'s mini subset alone"
    if model.startswith(ALONE_PREFIX):
        return f"the model trained on {model[len(ALONE_PREFIX):]} alone"
    return f"the {model}-plus-mini model"


def notation(model: str) -> str:
    """How a model appears in V_j(...): `i+mini` for a task-plus-mini model, its key otherwise."""
    if model in (MINI, START) or model.startswith((ALONE_PREFIX, MINI_ALONE_PREFIX)):
        return model
    return f"{model}+mini"


def score_of(scores: Mapping[str, Any], model: str, task: str, source: str) -> float:
    """V_task(model), with an error naming the model and task when it is missing or not a finite number."""
    if model not in scores:
        raise ValueError(
            f"{source}: no scores for model key {model!r} ({model_label(model)}); "
            f"its score on task {task!r} is needed"
        )
    row = scores[model]
    if not isinstance(row, Mapping):
        raise ValueError(
            f"{source}: model key {model!r} must map task names to scores, got {type(row).__name__}"
        )
    if task not in row:
        raise ValueError(
            f"{source}: model key {model!r} ({model_label(model)}) has no score on task {task!r}"
        )
    value = row[task]
    problem = score_problem(value)
    if problem:
        raise ValueError(f"{source}: score of model key {model!r} on task {task!r} ({model_label(model)}): {problem}")
    return float(value)


def check_scores_table(scores: Any, source: str) -> None:
    if not isinstance(scores, Mapping):
        raise ValueError(
            f"{source}: a scores table is a JSON object {{model key: {{task: score}}}}, "
            f"got {type(scores).__name__}"
        )


def check_scored_tasks(tasks: Sequence[str]) -> list[str]:
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
    check_scores_table(scores, source)
    f = get_form(form)
    return {
        j: score_of(scores, f.model(j), j, source) - score_of(scores, f.reference, j, source)
        for j in check_scored_tasks(tasks)
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
    tasks = check_scored_tasks(tasks)
    f = get_form(form)
    gains = own_gains(scores, tasks, source, form)
    found = []
    for j in tasks:
        full, ref = score_of(scores, f.model(j), j, source), score_of(scores, f.reference, j, source)
        tolerance = gain_tolerance * max(abs(full), abs(ref))
        gain = gains[j]
        if gain <= 0 or gain <= tolerance:
            what = "no gain" if gain == 0 else ("a negative gain" if gain < 0 else "a gain within the tolerance")
            reason = (
                f"its own data brought {what} (V_{j}({notation(f.model(j))}) - V_{j}({notation(f.reference)}) = "
                f"{full:.6g} - {ref:.6g} = {gain:.3g}, tolerance {tolerance:.3g} = {gain_tolerance:g} x the larger score)"
            )
            found.append(NoGainTask(j, gain, tolerance, reason))
            continue
        deltas = [(i, score_of(scores, f.model(i), j, source) - ref) for i in tasks if i != j]
        source_task, delta = max(deltas, key=lambda pair: abs(pair[1]))
        if abs(delta) > max_contribution * gain:
            reason = (
                f"its own-data gain {gain:.3g} is too small to divide by: {model_label(f.model(source_task))} moves "
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
    check_scores_table(scores, source)
    tasks = check_scored_tasks(tasks)
    f = get_form(form)
    gains = own_gains(scores, tasks, source, form)
    for j in tasks:
        if j not in undefined_targets and gains[j] == 0:
            raise ValueError(
                f"{source}: task {j!r}'s own data brought no gain (V_{j}({notation(f.model(j))}) == "
                f"V_{j}({notation(f.reference)}) = {score_of(scores, f.reference, j, source)!r}), so contributions to "
                f"it are undefined; check {model_label(f.model(j))} and its evaluation"
            )
    matrix: list[list[float | None]] = []
    for i in tasks:
        row: list[float | None] = []
        for j in tasks:
            if i == j or j in undefined_targets:
                row.append(None)
            else:
                delta = score_of(scores, f.model(i), j, source) - score_of(scores, f.reference, j, source)
                value = delta / gains[j]
                if not math.isfinite(value):
                    raise ValueError(
                        f"{source}: the contribution of task {i!r} to task {j!r} overflows ({delta!r} / {gains[j]!r}): "
                        f"check the scores of model keys {f.model(i)!r}, {f.model(j)!r} and {f.reference!r} on {j!r}"
                    )
                row.append(value)
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


MAX_DIFFICULTY = 1e6


def difficulty(
    scores: Mapping[str, Mapping[str, float]],
    tasks: Sequence[str],
    source: str = "scores",
    difficulty_from: str = "real",
) -> list[float]:
    """D_i = 1 - V_i(small_i) / V_i(full_i): how much of task i's full-data score the small data misses.

    real: 1 - V_i(mini) / V_i(i+mini); precise (App. F): 1 - V_i(mini-alone:i) / V_i(alone:i).
    """
    check_scores_table(scores, source)
    d = get_difficulty_source(difficulty_from)
    values = []
    for i in tasks:
        full = score_of(scores, d.full_model(i), i, source)
        if full == 0:
            raise ValueError(
                f"{source}: V_{i}({notation(d.full_model(i))}) is 0 (model key {d.full_model(i)!r} on task {i!r}), "
                f"so the difficulty of {i!r} is undefined"
            )
        value = 1.0 - score_of(scores, d.small_model(i), i, source) / full
        # A small-data model a million times better than the full-data one is a broken score, not a difficulty.
        if not math.isfinite(value) or abs(value) > MAX_DIFFICULTY:
            raise ValueError(
                f"{source}: the difficulty of task {i!r} is {value:.3g}, beyond +-{MAX_DIFFICULTY:g}: "
                f"V_{i}({notation(d.small_model(i))}) / "
                f"V_{i}({notation(d.full_model(i))}) = {score_of(scores, d.small_model(i), i, source)!r} / {full!r} "
                f"(model keys {d.small_model(i)!r} and {d.full_model(i)!r}); check those scores"
            )
        values.append(value)
    return values



# ---------------------------------------------------------------------------------------------
# Scores tables and task lists


def load_scores_table(path: str | os.PathLike) -> dict[str, Any]:
    """Read a scores table ({model key: {task: score}}); entries are validated where they are used."""
    scores = load_json(path, unique_keys=True)
    check_scores_table(scores, str(path))
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
