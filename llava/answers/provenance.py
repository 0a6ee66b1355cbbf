"""What made an answer file: the question file (content hash and ids), the model (content fingerprint), the settings.

Inference writes this record beside each answer file (`{stem}.provenance.json`) and keeps it inside its
progress files; a finished or half-finished file is only reused when every recorded input matches the
current run, and the scorers check that the answers are still the ones the record describes. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.utils import atomic_write_json, load_json

FORMAT = 1
SUFFIX = ".provenance.json"
# Files up to this size are hashed whole; larger weight files by size plus evenly spaced samples of their bytes.
FULL_HASH_LIMIT = 64 * 2**20
SAMPLE_BLOCKS = 64
SAMPLE_SIZE = 64 * 2**10
# Files of a checkpoint folder that say nothing about the model itself.
NOT_MODEL_FILES = {"trainer_state.json", "training_args.bin"}
MODEL_FILE_SUFFIXES = {".json", ".bin", ".safetensors", ".model", ".pt", ".pth", ".txt"}


def provenance_path(answers_file: str | os.PathLike) -> Path:
    """`answers/X.json` -> `answers/X.provenance.json` (likewise for `.jsonl`)."""
    path = Path(answers_file)
    return path.with_name(path.stem + SUFFIX)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sampled_sha256(path: Path, size: int) -> str:
    """Hash of evenly spaced blocks (first and last included): a retrained checkpoint differs in all of them."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for k in range(SAMPLE_BLOCKS):
            f.seek((size - SAMPLE_SIZE) * k // (SAMPLE_BLOCKS - 1))
            digest.update(f.read(SAMPLE_SIZE))
    return digest.hexdigest()


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """Content fingerprint of a checkpoint folder's model files (config, tokenizer, weights; not subfolders)."""
    entries = []
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or path.name in NOT_MODEL_FILES or path.suffix not in MODEL_FILE_SUFFIXES:
            continue
        size = path.stat().st_size
        content = file_sha256(path) if size <= FULL_HASH_LIMIT else _sampled_sha256(path, size)
        entries.append([path.name, size, content])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _location(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """{path, fingerprint} of a local folder or file; a hub name (nothing on disk) is identified by its name only."""
    if not path:
        return None
    local = Path(os.path.expanduser(os.fspath(path)))
    if local.is_dir():
        return {"path": str(local.resolve()), "fingerprint": folder_fingerprint(local)}
    if local.is_file():
        return {"path": str(local.resolve()), "fingerprint": file_sha256(local)}
    return {"path": os.fspath(path), "fingerprint": f"hub:{os.fspath(path)}"}


def _vision_tower_of(model_path: str | os.PathLike) -> str | None:
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return None
    try:
        tower = json.loads(config.read_text(encoding="utf-8")).get("mm_vision_tower")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    if not isinstance(tower, str) or not tower:
        return None
    relative = Path(model_path) / tower
    return str(relative) if not os.path.isabs(tower) and not os.path.exists(tower) and relative.exists() else tower


def model_identity(model_name: str, model_path: str | os.PathLike | None = None,
                   model_base: str | os.PathLike | None = None) -> dict[str, Any]:  # fmt: skip
    """The model beyond its folder name: fingerprints of the checkpoint, its base and its vision tower."""
    identity: dict[str, Any] = {"name": model_name, "checkpoint": _location(model_path), "base": _location(model_base)}
    identity["vision_tower"] = _location(_vision_tower_of(model_path)) if model_path else None
    return identity


def question_identity(question_file: str | os.PathLike, ids: Sequence[Any], start: int, end: int) -> dict[str, Any]:
    """The question file's content hash, and the ids (hash and count) of the range [start, end) answered."""
    chosen = [None if i is None else str(i) for i in ids[start:end]]
    return {
        "file": str(Path(question_file).resolve()),
        "sha256": file_sha256(question_file),
        "ids_sha256": hashlib.sha256(json.dumps(chosen).encode()).hexdigest(),
        "range": [start, end],
        "count": end - start,
    }


def make_provenance(questions: dict[str, Any], model: dict[str, Any], generation: dict[str, Any],
                    image_folder: str | os.PathLike | None = None) -> dict[str, Any]:  # fmt: skip
    """One provenance record (without the answers' own hash, which `write_provenance` adds)."""
    return {
        "format": FORMAT,
        "questions": questions,
        "model": model,
        "generation": dict(generation),
        "image_folder": str(Path(image_folder).resolve()) if image_folder else None,
    }


def _fingerprint(entry: Any) -> Any:
    return entry.get("fingerprint") if isinstance(entry, dict) else entry


def differences(recorded: Any, current: dict[str, Any]) -> list[str]:
    """What differs between a recorded provenance and the current run's, in words (empty when they match)."""
    if not isinstance(recorded, dict) or recorded.get("format") != FORMAT:
        return ["the provenance record is missing or not in this version's format"]
    found = []
    rq, cq = recorded.get("questions") or {}, current["questions"]
    if rq.get("sha256") != cq["sha256"]:
        found.append(f"the question file's content ({cq['file']} changed, or another file was used)")
    if rq.get("ids_sha256") != cq["ids_sha256"] or rq.get("range") != cq["range"]:
        found.append(f"the question ids or range ({rq.get('range')} then, {cq['range']} now)")
    rm, cm = recorded.get("model") or {}, current["model"]
    if rm.get("name") != cm["name"]:
        found.append(f"the model name ({rm.get('name')!r} then, {cm['name']!r} now)")
    for part, what in (("checkpoint", "checkpoint"), ("base", "--model-base"), ("vision_tower", "vision tower")):
        if _fingerprint(rm.get(part)) != _fingerprint(cm.get(part)):
            then = (rm.get(part) or {}).get("path") if isinstance(rm.get(part), dict) else None
            now = (cm.get(part) or {}).get("path")
            found.append(f"the {what}'s files ({then} then, {now} now: config or weights differ)")
    rg, cg = recorded.get("generation") or {}, current["generation"]
    for key in sorted(set(rg) | set(cg)):
        if rg.get(key) != cg.get(key):
            found.append(f"generation setting {key} ({rg.get(key)!r} then, {cg.get(key)!r} now)")
    if recorded.get("image_folder") != current.get("image_folder"):
        found.append(f"the image folder ({recorded.get('image_folder')} then, {current.get('image_folder')} now)")
    return found


def write_provenance(answers_file: str | os.PathLike, provenance: dict[str, Any]) -> Path:
    """Write the record beside `answers_file`, with the hash of the answer file as it is now."""
    path = provenance_path(answers_file)
    record = {**provenance, "answers_file": Path(answers_file).name, "answers_sha256": file_sha256(answers_file)}
    atomic_write_json(path, record)
    return path


def read_provenance(answers_file: str | os.PathLike) -> dict[str, Any] | None:
    """The record beside `answers_file`, or None when there is none; a malformed one is an error naming it."""
    path = provenance_path(answers_file)
    if not path.is_file():
        return None
    record = load_json(path)
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object (the provenance record of {answers_file})")
    return record


def stale_reasons(answers_file: str | os.PathLike, current: dict[str, Any]) -> list[str]:
    """Why an existing answer file cannot be reused for the current run (empty when it can)."""
    record = read_provenance(answers_file)
    if record is None:
        return [f"it has no provenance record ({provenance_path(answers_file).name}; written by an older version?)"]
    if record.get("answers_sha256") != file_sha256(answers_file):
        return ["it was changed after its provenance record was written (or the record belongs to another file)"]
    return differences(record, current)


def check_for_scoring(answers_file: str | os.PathLike, generator: str | None) -> list[str]:
    """Checks of a scorer: errors are raised, warnings returned (no record; question file changed since)."""
    record = read_provenance(answers_file)
    if record is None:
        return [f"{answers_file} has no provenance record ({provenance_path(answers_file).name}): which model and "
                "questions made it cannot be checked"]  # fmt: skip
    if record.get("answers_sha256") != file_sha256(answers_file):
        raise ValueError(
            f"{answers_file} is not the file its provenance record {provenance_path(answers_file)} describes (it "
            "was changed or replaced after inference wrote it); regenerate it with inference_visatb.py"
        )
    model = (record.get("model") or {}).get("name")
    if generator is not None and model is not None and generator != model:
        raise ValueError(f"{answers_file}: the answers name generator {generator!r} but the provenance record says "
                         f"model {model!r}; regenerate it")  # fmt: skip
    questions = record.get("questions") or {}
    source = questions.get("file")
    if source and Path(source).is_file() and file_sha256(source) != questions.get("sha256"):
        return [f"the question file {source} has changed since {answers_file} was made; the answers may be stale"]
    return []
