"""Where a rerun of a training continues, decided before any model is loaded.

A finished run (its final `trainer_state.json` reached the planned number of steps) is not trained again. The
newest `checkpoint-*` is checked first (trainer state, weighter state, weight files not truncated, pickled files
holding nothing but tensors and plain data); a damaged or refused one is reported and the previous one used;
when every checkpoint is damaged the run stops with their names.

Security: the Trainer and DeepSpeed read a checkpoint's `.pt`/`.pth`/`.bin` files with pickle, and DeepSpeed
does so with `weights_only=False`, which runs whatever code a planted file names. Every such file is therefore
first read here with torch's restricted unpickler (`weights_only=True`, memory-mapped so the tensors are not
read), which accepts only tensors, plain data and the few classes listed in `CHECKPOINT_SAFE_GLOBALS`; a file
that names anything else is refused before any library touches it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llava.utils import load_json

WEIGHTER_STATE_NAME = "weighter_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What a checkpoint (or the final output) holds the model in: full weights, LoRA adapter, projector, ZeRO shards.
MODEL_FILES = ("pytorch_model.bin", "model.safetensors", "pytorch_model.bin.index.json", "model.safetensors.index.json",
               "adapter_model.bin", "adapter_model.safetensors", "mm_projector.bin")  # fmt: skip
# The Trainer writes its own arguments here as a full pickle, and never reads the file back on resume.
NEVER_LOADED = ("training_args.bin",)
_PICKLED_SUFFIXES = (".bin", ".pt", ".pth")


def checkpoint_safe_globals() -> list[Any]:
    """Classes beyond torch's own safe set that a checkpoint of this project's training legitimately holds."""
    numpy_2 = int(np.__version__.split(".")[0]) >= 2
    multiarray = np._core.multiarray if numpy_2 else np.core.multiarray  # numpy 2 renamed np.core
    allowed: list[Any] = [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:  # DeepSpeed's optimizer states: its loss scaler and ZeRO bookkeeping (plain data classes and an enum)
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed += [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    except ImportError:
        pass
    return allowed


def unpickle_problem(path: Path) -> str | None:
    """Why `path` must not be unpickled (None when it holds only tensors, plain data and allowed classes).

    Reads the file with torch's restricted unpickler, which checks every class the pickle names before using
    it, so nothing in the file runs; the tensors are memory-mapped, not read.
    """
    allowed = checkpoint_safe_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        with torch.serialization.safe_globals(allowed):
            try:
                named = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
            except (ValueError, RuntimeError, OSError):
                named = []
        what = f"it names {', '.join(named)}" if named else str(e).strip().splitlines()[-1]
        return f"{path.name} was refused: {what}, which a checkpoint of this training never holds (nothing was run)"
    except (RuntimeError, ValueError, OSError, EOFError) as e:
        return f"{path.name} is not a readable torch.save archive ({str(e).strip().splitlines()[0][:200]})"
    return None


@dataclass
class ResumePlan:
    """The checkpoint to resume from (None: from scratch), whether the run is already finished, and warnings."""

    checkpoint: str | None = None
    finished: bool = False
    message: str = ""
    warnings: list[str] = field(default_factory=list)


def planned_max_steps(num_samples: int, per_device_batch: int, world_size: int, grad_accum: int,
                      num_epochs: float, max_steps: int) -> int:  # fmt: skip
    """The optimizer steps the HF Trainer (4.31) will run: `max_steps` if set, else epochs of full batches."""
    if max_steps > 0:
        return max_steps
    per_rank = math.ceil(num_samples / max(world_size, 1))
    batches = math.ceil(per_rank / max(per_device_batch, 1))
    return math.ceil(num_epochs * max(batches // max(grad_accum, 1), 1))


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found, reverse=True)


def _zip_problem(path: Path) -> str | None:
    """torch.save files are zip archives, whose directory sits at the end: a cut file has none."""
    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            return None  # an older torch format: not checked
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"{path.name} is truncated or corrupt ({e})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        return f"{path.name} has a corrupt header ({e})"
    if 8 + header_len + end != size:
        return f"{path.name} is truncated ({size} bytes, its header describes {8 + header_len + end})"
    return None


def _file_problem(path: Path) -> str | None:
    if path.stat().st_size == 0:
        return f"{path.name} is empty"
    if path.suffix in _PICKLED_SUFFIXES:
        return _zip_problem(path) or unpickle_problem(path)
    if path.suffix == ".safetensors":
        return _safetensors_problem(path)
    return None


def _deepspeed_problem(folder: Path) -> str | None:
    """DeepSpeed's resume reads `latest` (a tag naming a global_step folder) and that folder's pickled files."""
    latest = folder / "latest"
    if latest.is_file():
        tag = latest.read_text(errors="replace").strip()
        if not re.fullmatch(r"global_step\d+", tag) or not (folder / tag).is_dir():
            return f"latest names {tag[:80]!r}, not a global_step folder of this checkpoint"
    for step_dir in sorted(folder.glob("global_step*")):
        for path in sorted(step_dir.iterdir()):
            if path.is_file():
                problem = _file_problem(path)
                if problem:
                    return f"{step_dir.name}/{problem}"
    return None


def checkpoint_problem(folder: Path, weighter: Any = None) -> str | None:
    """Why `folder` cannot be resumed from (None when it looks whole); reads headers, not whole weight files."""
    try:
        state = load_json(folder / "trainer_state.json")
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            return "trainer_state.json holds no global_step"
    except (FileNotFoundError, ValueError) as e:
        return f"trainer_state.json: {e}"
    weighter_file = folder / WEIGHTER_STATE_NAME
    if weighter_file.is_file():
        try:
            saved = load_json(weighter_file)
            if not isinstance(saved, dict):
                return f"{WEIGHTER_STATE_NAME} is not a JSON object"
            if weighter is not None:
                copy.deepcopy(weighter).load_state_dict(saved)
        except (ValueError, KeyError, TypeError) as e:
            return f"{WEIGHTER_STATE_NAME}: {e}"
    has_model = any((folder / name).is_file() for name in MODEL_FILES) or any(folder.glob("global_step*"))
    if not has_model:
        return "it holds no model weights"
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (*_PICKLED_SUFFIXES, ".safetensors") and path.name not in NEVER_LOADED:
            problem = _file_problem(path)
            if problem:
                return problem
    return _deepspeed_problem(folder)


def _finished_run(output_dir: Path, planned_steps: int) -> str | None:
    state_file = output_dir / "trainer_state.json"
    if not state_file.is_file() or not any((output_dir / n).is_file() for n in ("config.json", "mm_projector.bin")):
        return None
    try:
        state = load_json(state_file)
    except ValueError:
        return None
    step = state.get("global_step") if isinstance(state, dict) else None
    own_end = state.get("max_steps") if isinstance(state, dict) else None
    # Finished by its own plan and by this run's: a rerun asking for more steps continues instead.
    if isinstance(step, int) and isinstance(own_end, int) and step >= max(planned_steps, own_end) and planned_steps > 0:
        return (f"[train] {output_dir} already holds a finished run (step {step} of {planned_steps}, model saved); "
                "nothing to train. Pass --overwrite_output_dir True to train it again, or another --output_dir")  # fmt: skip
    return None


def plan_resume(output_dir: str, overwrite_output_dir: bool, planned_steps: int, weighter: Any = None) -> ResumePlan:
    """Decide how a (re)run starts; raises ValueError when checkpoints exist but none can be resumed from."""
    folder = Path(output_dir)
    if overwrite_output_dir or not folder.is_dir():
        return ResumePlan()
    finished = _finished_run(folder, planned_steps)
    if finished:
        return ResumePlan(finished=True, message=finished)
    plan = ResumePlan()
    damaged = []
    for step, checkpoint in _checkpoints(folder):
        problem = checkpoint_problem(checkpoint, weighter)
        if problem is None:
            if step >= planned_steps > 0:
                raise ValueError(
                    f"{checkpoint} already reached step {step} of {planned_steps}, but {output_dir} holds no final "
                    f"model (was the run killed while saving?): copy the model files from {checkpoint.name}, or pass "
                    "--overwrite_output_dir True to train again"
                )
            plan.checkpoint = os.fspath(checkpoint)
            break
        damaged.append(f"{checkpoint} is damaged: {problem}")
        plan.warnings.append(f"WARNING: {damaged[-1]}; trying the previous checkpoint")
    if plan.checkpoint is None and damaged:
        raise ValueError(
            f"every checkpoint in {output_dir} is damaged ({'; '.join(damaged)}); delete them, or pass "
            "--overwrite_output_dir True to start over"
        )
    return plan
