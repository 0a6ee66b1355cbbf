r"""Merge the per-GPU answer chunks `{answers_dir}/{num_chunks}_{idx}.jsonl` into one file in question order.

Also home of the answer-file readers the scorers share, and of the chunk split of the generation
modules (contiguous, balanced: the first `total % num_chunks` chunks hold one question more, so no
chunk is empty unless there are fewer questions than chunks).

    python -m llava.eval.merge_chunks --question-file Q.jsonl --answers-dir DIR --num-chunks 4 \
        --output-file DIR/merge.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from llava.utils import answer_key, atomic_write_text, chunk_bounds, load_json, refuse_same_file
from llava.visatb import provenance

T = TypeVar("T")

# MMBench rows carry a base64 image in one field, far above csv's default field limit.
_TSV_FIELD_LIMIT = 2**31 - 1


class TruncatedFileError(ValueError):
    """A jsonl file whose last line is not valid JSON: its writer was interrupted."""


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a jsonl file of objects; a bad line names the file and line (a bad last line reads as truncated)."""
    return [record for _, record in _read_jsonl_lines(path)]


def read_answers(path: str | os.PathLike, fields: Sequence[str] = ("question_id", "text")) -> list[dict[str, Any]]:
    """Read LLaVA's answers jsonl, checking every answer has `fields`; a missing one names file and line."""
    answers = read_jsonl(path)
    for lineno, answer in enumerate(answers, start=1):
        for field in fields:
            if field not in answer:
                raise ValueError(f"{path}: answer {lineno} has no {field!r} field")
    return answers


def _read_jsonl_lines(path: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
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


def get_chunk(items: Sequence[T], num_chunks: int, chunk_idx: int) -> list[T]:
    """The items of one chunk (see `chunk_bounds`)."""
    start, stop = chunk_bounds(len(items), num_chunks, chunk_idx)
    return list(items[start:stop])


def chunk_path(answers_dir: str | os.PathLike, num_chunks: int, chunk_idx: int) -> Path:
    """Where generation writes chunk `chunk_idx` of `num_chunks`."""
    return Path(answers_dir) / f"{num_chunks}_{chunk_idx}.jsonl"


def _examples(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def merge_chunks(
    question_file: str | os.PathLike,
    answers_dir: str | os.PathLike,
    num_chunks: int,
    output_file: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Merge the chunk files in question order, checking that every question is answered exactly once."""
    if num_chunks < 1:
        raise ValueError(f"--num-chunks must be at least 1, got {num_chunks}")
    if output_file is not None:
        chunks = {f"chunk {k}": chunk_path(answers_dir, num_chunks, k) for k in range(num_chunks)}
        refuse_same_file(output_file, {"--question-file": question_file, **chunks}, "--output-file")
    question_ids = load_question_ids(question_file)
    expected = Counter(question_ids)
    first_position: dict[str, int] = {}
    for pos, qid in enumerate(question_ids):
        first_position.setdefault(qid, pos)

    entries: list[tuple[str, dict[str, Any]]] = []
    seen_in: dict[tuple[str, int], list[str]] = defaultdict(list)
    for idx in range(num_chunks):
        path = chunk_path(answers_dir, num_chunks, idx)
        if not path.is_file():
            raise FileNotFoundError(f"chunk {idx} of {num_chunks} is missing: {path} (did its generation process fail?)")
        lines = _read_jsonl_lines(path)
        start, stop = chunk_bounds(len(question_ids), num_chunks, idx)
        if not lines and stop > start:
            raise ValueError(f"chunk {idx} of {num_chunks} ({path}) is empty but should answer {stop - start} questions")
        for lineno, (line, record) in enumerate(lines, start=1):
            if "question_id" not in record:
                raise ValueError(f"{path}: answer {lineno} has no 'question_id' field")
            key = answer_key(record)
            if key[0] not in expected:
                raise ValueError(f"{path}: answer {lineno} has question_id {key[0]!r}, which is not in {question_file}")
            seen_in[key].append(path.name)
            entries.append((line, record))

    duplicated = [key for key, where in seen_in.items() if len(where) > expected[key[0]]]
    if duplicated:
        key = duplicated[0]
        raise ValueError(
            f"question_id {key[0]!r} (round {key[1]}) is answered {len(seen_in[key])} times "
            f"(in {', '.join(seen_in[key])}); {len(duplicated)} duplicated answer(s) in all"
        )
    missing = [qid for qid in expected if len(seen_in.get((qid, 0), ())) < expected[qid]]
    if missing:
        raise ValueError(
            f"{len(missing)} question(s) of {question_file} have no answer in the {num_chunks} chunk(s) "
            f"under {answers_dir}: {_examples(missing)}"
        )

    origin = _common_origin(question_file, answers_dir, num_chunks)
    # A stable sort keeps chunk order among answers to the same question (repeated ids, rounds).
    entries.sort(key=lambda entry: first_position[str(entry[1]["question_id"])])
    if output_file is not None:
        atomic_write_text(output_file, "".join(line + "\n" for line, _ in entries))
        if origin is not None:
            provenance.write_provenance(output_file, origin)
    return [record for _, record in entries]


def _common_origin(question_file: str | os.PathLike, answers_dir: str | os.PathLike, num_chunks: int) -> dict | None:
    """The chunks' shared provenance (model, settings, this question file); chunks that disagree are an error.

    Chunks without a record (written by an older version) are merged with a warning; then None is returned.
    """
    sha = provenance.file_sha256(question_file)
    first: dict[str, Any] | None = None
    for idx in range(num_chunks):
        path = chunk_path(answers_dir, num_chunks, idx)
        record = provenance.read_provenance(path)
        if record is None:
            print(f"warning: chunk {idx} of {num_chunks} ({path}) has no provenance record: which model and settings "
                  "made it cannot be checked", file=sys.stderr)  # fmt: skip
            return None
        if (record.get("questions") or {}).get("sha256") != sha:
            raise ValueError(f"chunk {idx} of {num_chunks} ({path}) answers another version of {question_file} (its "
                             "content changed since); regenerate that chunk")  # fmt: skip
        if first is None:
            first = record
            continue
        reasons = provenance.differences(first, {**record, "questions": first["questions"]})
        if reasons:
            raise ValueError(f"chunk {idx} of {num_chunks} ({path}) was made from other inputs than chunk 0: "
                             f"{'; '.join(reasons)}; regenerate it")  # fmt: skip
    if first is None:
        return None
    whole = {**first["questions"], "range": None, "count": None, "ids_sha256": None}
    return provenance.make_provenance(whole, first["model"], first["generation"], first["image_folder"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--question-file", required=True, help="questions (.jsonl, .json list or MMBench .tsv)")
    parser.add_argument("--answers-dir", required=True, help="folder of the {num_chunks}_{idx}.jsonl chunk files")
    parser.add_argument("--num-chunks", type=int, required=True)
    parser.add_argument("--output-file", required=True, help="merged answers (jsonl)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        merged = merge_chunks(args.question_file, args.answers_dir, args.num_chunks, args.output_file)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"merged {len(merged)} answers from {args.num_chunks} chunk(s) into {args.output_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
