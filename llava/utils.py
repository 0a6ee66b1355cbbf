"""Small helpers shared across the package: atomic file writes, JSON loading with clear errors, chunk bounds."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    The file gets the mode a plain `open(path, "w")` would give (0666 minus the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) atomically, as `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Serialise `obj` as JSON and write it atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    """Load a JSON file; a missing file or a syntax error names the file (and line/column)."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); JSON files must be UTF-8") from e


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same file (through links and relative spellings), existing or not."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def refuse_same_file(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], output_flag: str) -> None:
    """Raise a ValueError when `output` is one of `inputs` ({flag: path}): writing it would destroy an input."""
    for flag, path in inputs.items():
        if path is not None and same_file(output, path):
            raise ValueError(f"{output_flag} {output} is the same file as {flag} {path}: it would be overwritten; "
                             f"choose another {output_flag}")


def answer_key(record: dict[str, Any]) -> tuple[str, int]:
    """What identifies one answer: the question id (as a string) and the option rotation (MMBench), 0 if none."""
    return str(record["question_id"]), int(record.get("round_id", 0) or 0)


def chunk_bounds(total: int, num_chunks: int, chunk_idx: int) -> tuple[int, int]:
    """[start, stop) of chunk `chunk_idx` when `total` items are cut into `num_chunks` contiguous, balanced chunks.

    The first `total % num_chunks` chunks hold one item more, so no chunk is empty unless there are fewer
    items than chunks (then the last ones are).
    """
    if num_chunks < 1:
        raise ValueError(f"the number of chunks (num_chunks) must be at least 1, got {num_chunks}")
    if not 0 <= chunk_idx < num_chunks:
        raise ValueError(
            f"chunk index {chunk_idx} is out of range for {num_chunks} chunks (chunk_idx must be in 0..{num_chunks - 1})"
        )
    base, extra = divmod(total, num_chunks)
    start = chunk_idx * base + min(chunk_idx, extra)
    return start, start + base + (1 if chunk_idx < extra else 0)


def disable_torch_init() -> None:
    """Skip the default random initialisation of Linear/LayerNorm (speeds up loading pretrained weights)."""
    import torch

    torch.nn.Linear.reset_parameters = lambda self: None
    torch.nn.LayerNorm.reset_parameters = lambda self: None
