"""Reading question and answer files: JSON lines, LLaVA's answer jsonl, MMBench's tsv, question ids.

Every reader names the file and line of a bad record; a bad last line of a jsonl file reads as a truncated
file (its writer was killed). Whole JSON documents are read with `llava.utils.load_json`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.utils import load_json

# MMBench rows carry a base64 image in one field, far above csv's default field limit.
_TSV_FIELD_LIMIT = 2**31 - 1


class TruncatedFileError(ValueError):
    """A jsonl file whose last line is not valid JSON: its writer was interrupted."""


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a jsonl file of objects; a bad line names the file and line (a bad last line reads as truncated)."""
    return [record for _, record in read_jsonl_lines(path)]


def read_answers(path: str | os.PathLike, fields: Sequence[str] = ("question_id", "text")) -> list[dict[str, Any]]:
    """Read LLaVA's answers jsonl, checking every answer has `fields`; a missing one names file and line."""
    answers = read_jsonl(path)
    for lineno, answer in enumerate(answers, start=1):
        for field in fields:
            if field not in answer:
                raise ValueError(f"{path}: answer {lineno} has no {field!r} field")
    return answers


def read_jsonl_lines(path: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """(line text, object) for every non-blank line of a jsonl file, checked as `read_jsonl` checks them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    out = []
    for pos, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if pos == len(numbered) - 1:
                raise TruncatedFileError(
                    f"{path}: line {lineno} is not valid JSON ({e.msg}); the file looks truncated "
                    "(was its writer killed?). Regenerate it."
                ) from e
            raise ValueError(f"{path}: line {lineno} is not valid JSON: {e.msg}") from e
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {lineno} is a JSON {type(record).__name__}, expected an object")
        out.append((line, record))
    return out


def read_tsv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a tab-separated table with a header row (MMBench's format) into dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    csv.field_size_limit(_TSV_FIELD_LIMIT)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and None in rows[0]:
        raise ValueError(f"{path}: row 2 has more fields than the header")
    return rows


def load_question_ids(question_file: str | os.PathLike) -> list[str]:
    """Question ids in file order (as strings): jsonl `question_id`, json list `id`/`question_id`, tsv `index`."""
    path = Path(question_file)
    if path.suffix == ".tsv":
        rows = read_tsv(path)
        if rows and "index" not in rows[0]:
            raise ValueError(f"{path}: no 'index' column (columns: {', '.join(rows[0])})")
        return [row["index"] for row in rows]
    if path.suffix == ".jsonl":
        records = read_jsonl(path)
        key_options: tuple[str, ...] = ("question_id",)
    else:
        records = load_json(path)
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of questions, got a {type(records).__name__}")
        key_options = ("question_id", "id")
    ids = []
    for i, record in enumerate(records):
        key = next((k for k in key_options if isinstance(record, dict) and k in record), None)
        if key is None:
            raise ValueError(f"{path}: question {i + 1} has no {' or '.join(repr(k) for k in key_options)} field")
        ids.append(str(record[key]))
    return ids
