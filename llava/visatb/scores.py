"""The scores table: validation scores V_j(m) as a JSON object {model key: {task name: score}}.

Model keys (the metric CLIs add entries with `record_score`):

    start              the untrained starting model
    mini               the mini model (the mini subsets of every task)
    <task>             that task's task-plus-mini model (the whole task plus the minis of the others)
    alone:<task>       trained on that task's data alone (the STL models)
    mini-alone:<task>  trained on that task's mini subset alone
    EW, TLA, RLW, DWA, IGB, VisATB, ...   final models, by the name of their weighting method
    STL                optional: the single-task baseline as one row (else composed from alone:<task>)

With task groups (M3IT's setting), the preparation models are per group: `<group>` (the group's tasks plus
the minis of the others), `alone:<group>`, `mini-alone:<group>`. The table keeps one column per task; a
group's score is the plain mean of its tasks' scores (`group_scores`), and the weighting, the report and the
comparison read that group-level table.
"""

from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llava.utils import atomic_write_json, load_json

ScoresTable = dict[str, dict[str, float]]

START = "start"
MINI = "mini"
STL = "STL"
ALONE_PREFIX = "alone:"
MINI_ALONE_PREFIX = "mini-alone:"
VISATB = "VisATB"
EW = "EW"
# The final models by weighting method (the chain's --methods): VisATB, then the paper's baselines.
METHOD_KEYS = (VISATB, EW, "TLA", "RLW", "DWA", "IGB")


def alone_key(task: str) -> str:
    """Model key of the model trained on `task`'s data alone."""
    return ALONE_PREFIX + task


def mini_alone_key(task: str) -> str:
    """Model key of the model trained on `task`'s mini subset alone."""
    return MINI_ALONE_PREFIX + task


def group_scores(table: ScoresTable, groups: dict[str, Any]) -> ScoresTable:
    """{model: {group: mean of the group's task scores}}; a model lacking a task of a group gets no score for
    that group (it is left out, never averaged over fewer tasks)."""
    result: ScoresTable = {}
    for model, row in table.items():
        grouped = {g: sum(row[t] for t in tasks) / len(tasks) for g, tasks in groups.items()
                   if tasks and all(t in row for t in tasks)}  # fmt: skip
        if grouped:
            result[model] = grouped
    return result


# No metric of the project comes near this (accuracy <= 1 or 100 in percent, CIDEr <= 10, the judge's relative
# score a few hundred at most); a larger value is a unit or parsing mistake, and ratios of such values overflow.
MAX_SCORE = 1e6


def _is_score(value: Any) -> bool:
    # bool is an int subclass; `true` in a scores table is a mistake, not a 1.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def score_problem(value: Any) -> str | None:
    """Why `value` cannot be a score (not a finite number, negative, or over MAX_SCORE), or None."""
    if not _is_score(value):
        return f"score {value!r} is not a finite number"
    if value < 0:
        return f"score {value!r} is negative; every metric (accuracy, CIDEr, the judge's relative score) is at least 0"
    if value > MAX_SCORE:
        return f"score {value!r} is over {MAX_SCORE:g}, beyond any metric of the project (a unit or parsing mistake?)"
    return None


def validate_scores(table: Any, source: str = "scores") -> ScoresTable:
    """Check the table's shape: an object of objects of scores (`score_problem`); errors name the model and task."""
    if not isinstance(table, dict):
        raise ValueError(
            f"{source}: expected a JSON object {{model key: {{task: score}}}}, got {type(table).__name__}"
        )
    for model_key, task_scores in table.items():
        if not isinstance(task_scores, dict):
            raise ValueError(
                f"{source}: model {model_key!r} must map task names to scores, got {type(task_scores).__name__}"
            )
        for task, score in task_scores.items():
            problem = score_problem(score)
            if problem:
                raise ValueError(f"{source}: model {model_key!r}, task {task!r}: {problem}")
    return table


def load_scores(path: str | os.PathLike) -> ScoresTable:
    """Load and validate a scores table."""
    return validate_scores(load_json(path, unique_keys=True), source=str(path))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path`'s sidecar `.lock` file (kept: deleting it would race other writers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def record_score(path: str | os.PathLike, model_key: str, task: str, score: float) -> None:
    """Set table[model_key][task] = score, creating the file if needed and keeping every other entry."""
    if not isinstance(model_key, str) or not model_key.strip():
        raise ValueError(f"model key must be a non-empty string, got {model_key!r}")
    if not isinstance(task, str) or not task.strip():
        raise ValueError(f"task name must be a non-empty string, got {task!r}")
    problem = score_problem(score)
    if problem:
        raise ValueError(f"model {model_key!r}, task {task!r}: {problem}")
    path = Path(path)
    # Parallel metric runs read-modify-write the same table: serialise them so none loses another's entry.
    with _locked(path):
        table = load_scores(path) if path.exists() else {}
        table.setdefault(model_key, {})[task] = float(score)
        atomic_write_json(path, table)
