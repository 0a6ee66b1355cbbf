"""The weights file: the small contract between the weighting step and training.

Training (`--visatb_weights_file`) reads only `tasks` and `visatb_weights` of the JSON that
weighting_visatb.py writes; this module needs neither numpy nor the rest of the weighting.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llava.utils import atomic_write_json, load_json

if TYPE_CHECKING:
    from llava.visatb.weights.weights import VisatbWeights


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
