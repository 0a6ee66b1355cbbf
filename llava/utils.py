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


class WriteError(OSError):
    """A file could not be written; the message names it and says that its previous version is untouched."""

    def __init__(self, path: str | os.PathLike, cause: OSError) -> None:
        reason = cause.strerror or str(cause) or type(cause).__name__
        existed = "its previous version is left as it was" if os.path.isfile(path) else "nothing was written"
        if os.path.isdir(path):
            reason = "it is a folder; give a file path"
        else:
            blocker = next((p for p in Path(path).parents if p.exists()), None)
            if blocker is not None and not blocker.is_dir():
                reason = f"{blocker} is a file, not a folder"
        super().__init__(cause.errno, f"cannot write {os.fspath(path)}: {reason} ({existed})")
        self.filename = os.fspath(path)

    def __str__(self) -> str:
        return self.strerror


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    The file gets the mode a plain `open(path, "w")` would give (0666 minus the umask), not mkstemp's 0600.
    A failed write (a full disk, a file-size limit) raises an OSError that names `path` and keeps its errno;
    the previous file at `path`, if any, is left as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(path, e) from e
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) atomically, as `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Serialise `obj` as JSON and write it atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


JSONL_TO_JSON = "python -m llava.utils jsonl-to-json"


def _read_text(path: Path) -> str:
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading byte-order mark (Windows editors) is dropped
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); JSON files must be UTF-8") from e
    if not text.strip():
        raise ValueError(f"{path}: the file is empty{' (0 bytes)' if not text else ''}: was its writer stopped?")
    return text


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key {repeated[0]!r} appears twice in one object (JSON keeps only the last)")
    return dict(pairs)


def _json_lines(text: str) -> list[Any] | None:
    """The values of a JSON Lines text (one JSON value per non-blank line), or None when it is not one."""
    values = []
    for line in text.splitlines():
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError:
                return None
    return values if len(values) > 1 else None


def load_json(path: str | os.PathLike, unique_keys: bool = False) -> Any:
    """Load a JSON file; a missing or empty file or a syntax error names the file (and line/column).

    A JSON Lines file (one record per line) is refused with a message that says so and how to convert it:
    the files read here are one JSON document (LLaVA's training data is a JSON list). With `unique_keys`, a
    key repeated within one object is an error (small tables such as scores, where the last would win silently).
    """
    path = Path(path)
    text = _read_text(path)
    try:
        if unique_keys:
            try:
                return json.loads(text, object_pairs_hook=_unique_keys)
            except ValueError as e:
                if isinstance(e, json.JSONDecodeError):
                    raise
                raise ValueError(f"{path}: {e}") from None
        return json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and _json_lines(text) is not None:
            raise ValueError(
                f"{path}: this is JSON Lines (one JSON value per line); JSON Lines is not accepted here, only "
                f"one JSON document (a list of records). Convert it with: {JSONL_TO_JSON} {path} OUT.json"
            ) from e
        raise ValueError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


def load_json_or_lines(path: str | os.PathLike) -> Any:
    """Load a JSON file, or a JSON Lines file (one record per line, as LLaVA's own eval question files) as a list.

    JSON Lines is told by its content, whatever the file's extension; a bad line names the file and the line.
    """
    path = Path(path)
    text = _read_text(path)
    try:
        value = json.loads(text)
        # A one-record JSON Lines file parses as one object.
        return [value] if isinstance(value, dict) and path.suffix == ".jsonl" else value
    except json.JSONDecodeError as e:
        if e.msg != "Extra data":
            raise ValueError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: JSON Lines: line {number}, column {e.colno}: {e.msg}") from e
    return values


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


def jsonl_to_json(source: str | os.PathLike, target: str | os.PathLike) -> int:
    """Write the records of a JSON Lines file as one JSON list (atomically); returns the record count."""
    records = load_json_or_lines(source)
    if not isinstance(records, list):
        raise ValueError(f"{source}: expected JSON Lines records or a JSON list, got {type(records).__name__}")
    refuse_same_file(target, {"the input": source}, "the output")
    atomic_write_json(target, records)
    return len(records)


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m llava.utils", description="File helpers.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("jsonl-to-json", help="turn a JSON Lines file into one JSON list of records")
    convert.add_argument("source")
    convert.add_argument("target")
    args = parser.parse_args(argv)
    try:
        count = jsonl_to_json(args.source, args.target)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {count} records to {args.target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
