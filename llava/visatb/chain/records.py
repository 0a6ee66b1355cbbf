"""What made each chain item, so that a rerun redoes exactly the items whose inputs or parameters changed.

An item's record holds its parameters (the command line without the Python interpreter's path, and the item's
own environment variables) and a digest of each input: a file's SHA-256, a model folder's digest over its
top-level files, a number's canonical JSON, or the run id of the chain item that made it (written into that
item's done-marker each time it runs, so remaking a model remakes what was computed from it). The done-marker
keeps the record; a rerun compares it with the record the item would have now. As in make or Snakemake, an
output is reused only while everything it was made from is unchanged, and the chain says which items it redoes
and why.

Image folders are recorded by path, not hashed (a benchmark holds hundreds of thousands of images): a changed
image is not noticed, a changed IMAGE_FOLDER is.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava.utils import atomic_write_json

HASH_CACHE_NAME = "hashes.json"
ITEM_PREFIX = "item:"  # an input made by another item of the chain: "item:<stage>/<key>"
VALUE_PREFIX = "value:"  # an input given as a digest already (e.g. the scores the weights are computed from)
_CHUNK = 1 << 20


def canonical_digest(value: Any) -> str:
    """SHA-256 of a JSON value with sorted keys: equal data, equal digest."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_run_id() -> str:
    return uuid.uuid4().hex


class FileHasher:
    """SHA-256 of files, cached by (size, mtime) so that a rerun does not read unchanged model weights again."""

    def __init__(self, cache_file: Path):
        self.cache_file = cache_file
        self._cache: dict[str, list[Any]] = {}
        self._dirty = False
        try:
            loaded = json.loads(cache_file.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self._cache = loaded
        except (OSError, ValueError):
            pass

    def file(self, path: Path) -> str:
        path = path.resolve()
        stat = path.stat()
        key = str(path)
        cached = self._cache.get(key)
        if isinstance(cached, list) and len(cached) == 3 and cached[:2] == [stat.st_size, stat.st_mtime_ns]:
            return str(cached[2])
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        self._cache[key] = [stat.st_size, stat.st_mtime_ns, digest.hexdigest()]
        self._dirty = True
        return digest.hexdigest()

    def folder(self, path: Path) -> str:
        """A model folder: its top-level files (configuration, tokenizer, weights); sub-folders such as
        checkpoints and logs are not part of the model."""
        files = sorted(p for p in path.iterdir() if p.is_file())
        return canonical_digest({p.name: self.file(p) for p in files})

    def path(self, value: str | os.PathLike[str]) -> str:
        """Digest of a path given on the command line; a name that is no local path (a hub model) by name."""
        path = Path(value)
        if path.is_file():
            return "sha256:" + self.file(path)
        if path.is_dir():
            return "folder:" + self.folder(path)
        return f"absent:{value}"

    def save(self) -> None:
        if self._dirty:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.cache_file, self._cache)
            self._dirty = False


@dataclass
class Record:
    """An item's parameters and the digest of each of its inputs."""

    params: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"params": self.params, "inputs": self.inputs}

    @property
    def digest(self) -> str:
        return canonical_digest(self.to_json())


def with_real_paths(roots: Mapping[str, str]) -> dict[str, str]:
    """`roots` ({path: name}) plus each path with its symbolic links resolved, under the same name."""
    return {**roots, **{os.path.realpath(root): name for root, name in roots.items()}}


def portable(value: str, roots: Mapping[str, str]) -> str:
    """`value` with a folder of `roots` ({path: name}) replaced by its name, also when `value` reaches that folder
    through a symbolic link, so that the same file named two ways is one parameter."""
    if not value.startswith(os.sep):
        return value
    candidates = [value]
    real = os.path.realpath(value)
    if real != value:
        candidates.append(real)
    for candidate in candidates:
        for root, name in roots.items():
            if candidate == root:
                return name or "."
            if candidate.startswith(root + os.sep):
                rest = candidate[len(root) + 1 :]
                return f"{name}/{rest}" if name else rest
    return value


def command_params(command: list[str], python: str, repo_root: Path,
                   roots: Mapping[str, str] | None = None) -> list[str]:  # fmt: skip
    """The command as recorded: the interpreter and the checkout's location are not parameters of the result;
    `roots` maps more folders to names (the work directory to $WORK_DIR), so a moved folder is no change."""
    names = with_real_paths({str(repo_root): "", **(roots or {})})
    return ["python" if index == 0 and token == python else portable(token, names)
            for index, token in enumerate(command)]  # fmt: skip


def _command_changes(old: list[Any], new: list[Any]) -> list[str]:
    if len(old) == len(new):
        changes = []
        for index, (before, after) in enumerate(zip(old, new)):
            if before != after:
                flag = next((str(t) for t in reversed(new[:index]) if str(t).startswith("-")), "argument")
                changes.append(f"{flag} {before} -> {after}")
        return changes
    removed = [str(t) for t in old if t not in new]
    added = [str(t) for t in new if t not in old]
    parts = ([f"removed {' '.join(removed)}"] if removed else []) + ([f"added {' '.join(added)}"] if added else [])
    return [f"command line: {'; '.join(parts) or 'reordered'}"]


def record_changes(old: Mapping[str, Any] | None, new: Record, input_labels: Mapping[str, str] | None = None) -> list[str]:
    """Why `new` differs from the record a marker kept, as short phrases (empty: the same)."""
    if not isinstance(old, Mapping) or "params" not in old:
        return ["its done-marker holds no record of what made it"]
    labels = input_labels or {}
    reasons: list[str] = []
    old_params, new_params = old.get("params") or {}, new.params
    if old_params.get("command") != new_params.get("command"):
        reasons += _command_changes(list(old_params.get("command") or []), list(new_params.get("command") or []))
    old_env, new_env = old_params.get("env") or {}, new_params.get("env") or {}
    for name in sorted(set(old_env) | set(new_env)):
        if old_env.get(name) != new_env.get(name):
            reasons.append(f"{name} {old_env.get(name, '(unset)')!s} -> {new_env.get(name, '(unset)')!s}")
    for name in sorted(set(old_params) | set(new_params) - {"command", "env"}):
        if name not in ("command", "env") and old_params.get(name) != new_params.get(name):
            reasons.append(f"{name} {old_params.get(name)} -> {new_params.get(name)}")
    old_inputs, new_inputs = old.get("inputs") or {}, new.inputs
    for name in sorted(set(old_inputs) | set(new_inputs)):
        what = labels.get(name, name)
        if name not in old_inputs:
            reasons.append(f"new input {what}")
        elif name not in new_inputs:
            reasons.append(f"input {what} no longer used")
        elif old_inputs[name] != new_inputs[name]:
            reasons.append(f"{what} changed")
    return reasons
