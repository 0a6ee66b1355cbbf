"""Check a LLaVA-format multi-task data file before a long run: tasks, conversations, <image>, image files.

Every image is opened and decoded as training would (empty, truncated, non-image and over-large files are
reported), which reads every image once.

    python -m llava.visatb.check_data --data Academic_train-475k.json --image-folder data/images --task-preset academic

Every problem goes into one report (the first 20 of each kind are listed, all are counted);
the exit code is 1 when there is any problem, 2 when the file itself cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.mm_utils import ImageTooLargeError, load_image
from llava.utils import load_json
from llava.visatb.tasks import resolve_tasks

MAX_LISTED = 20

# Kinds of problems, in report order, with their headings.
NO_RECORDS = "no_records"
NOT_A_RECORD = "not_a_record"
MISSING_TASK = "missing_task"
UNKNOWN_TASK = "unknown_task"
BAD_CONVERSATION = "bad_conversation"
IMAGE_TOKEN = "image_token"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
TOO_LARGE_IMAGE = "too_large_image"
DUPLICATE_ID = "duplicate_id"
PROBLEM_TITLES = {
    NO_RECORDS: "data files without records",
    NOT_A_RECORD: "records that are not JSON objects",
    MISSING_TASK: "records without a 'task' name",
    UNKNOWN_TASK: "records whose task is not in the task list",
    BAD_CONVERSATION: "malformed conversations (not human/gpt turns from a human turn, or an empty answer; a first "
    "gpt turn is dropped)",
    IMAGE_TOKEN: "<image> token and 'image' field disagree",
    MISSING_IMAGE: "image files that do not exist",
    UNREADABLE_IMAGE: "image files that cannot be decoded (empty, truncated or not an image)",
    TOO_LARGE_IMAGE: "images over Pillow's pixel limit (PIL.Image.MAX_IMAGE_PIXELS)",
    DUPLICATE_ID: "record ids used more than once (a validation set would count those questions twice; "
    "--allow-duplicate-ids for a training mix whose ids name images, as LLaVA's own mixes do)",
}


@dataclass
class ProblemList:
    """All problems of one kind: counted in full, the first MAX_LISTED kept for the report."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_LISTED:
            self.examples.append(text)


@dataclass
class DataReport:
    """What `check_records` found; `ok` is False when there is any problem."""

    source: str
    total: int
    task_counts: dict[str, int]
    tasks: list[str] | None
    images_checked: bool
    problems: dict[str, ProblemList] = field(
        default_factory=lambda: {k: ProblemList() for k in PROBLEM_TITLES}
    )
    # Not problems: conversations whose first turn (from gpt) training drops, as upstream LLaVA does.
    dropped_first_turns: ProblemList = field(default_factory=ProblemList)

    @property
    def error_count(self) -> int:
        return sum(p.count for p in self.problems.values())

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def format(self) -> str:
        lines = [f"Data check of {self.source}: {self.total} records"]
        known = self.tasks if self.tasks is not None else list(self.task_counts)
        names = list(known) + [t for t in self.task_counts if t not in known]
        width = max([len(t) for t in names] + [len("task")]) + 2
        lines.append(f"  {'task':<{width}}{'records':>9}")
        for task in names:
            note = "  (not in the task list)" if self.tasks is not None and task not in self.tasks else ""
            lines.append(f"  {task:<{width}}{self.task_counts.get(task, 0):>9}{note}")
        if not self.images_checked:
            lines.append("  (image files not checked: no image folder given)")
        lines.extend(_dropped_first_turn_lines(self.dropped_first_turns))
        for kind, title in PROBLEM_TITLES.items():
            problem = self.problems[kind]
            if problem.count:
                lines.append(f"{title}: {problem.count}")
                lines.extend(f"  {text}" for text in problem.examples)
                if problem.count > len(problem.examples):
                    lines.append(f"  ... and {problem.count - len(problem.examples)} more")
        if self.ok:
            lines.append("OK: no problems found")
        else:
            lines.append(f"FAILED: {self.error_count} problem(s)")
        return "\n".join(lines)


def _dropped_first_turn_lines(dropped: ProblemList) -> list[str]:
    if not dropped.count:
        return []
    lines = [f"first turn from gpt, dropped before training as LLaVA does (not an error): {dropped.count}"]
    lines.extend(f"  {text}" for text in dropped.examples)
    if dropped.count > len(dropped.examples):
        lines.append(f"  ... and {dropped.count - len(dropped.examples)} more")
    return lines


def _label(index: int, record: Any) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"record {index}" + (f" (id {rid!r})" if rid is not None else "")


def starts_with_gpt(record: Any) -> bool:
    """True when the record's first turn is from gpt: training drops that turn, as upstream LLaVA does."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    return isinstance(turns, list) and bool(turns) and isinstance(turns[0], dict) and turns[0].get("from") == "gpt"


def without_leading_gpt_turn(record: dict) -> dict:
    """The record as training sees it: a first turn from gpt removed (a shallow copy; the input is kept)."""
    if not starts_with_gpt(record):
        return record
    return {**record, "conversations": record["conversations"][1:]}


def conversation_problem(record: dict, allow_reference_lists: bool = False) -> str | None:
    """Why `conversations` is not human, gpt, human, gpt, ... (ending with gpt), or None when it is.

    A first turn from gpt is not a problem: it is dropped (see `starts_with_gpt`) and the rest is checked.
    """
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return "no 'conversations' list"
    offset = 1 if starts_with_gpt(record) else 0
    if offset and len(turns) == 1:
        return "has only a gpt turn (nothing is left once it is dropped)"
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            return f"turn {k} is not an object with 'from' and 'value'"
        if k < offset:
            continue
        expected = "human" if (k - offset) % 2 == 0 else "gpt"
        if turn["from"] != expected:
            return f"turn {k} is from {turn['from']!r}, expected {expected!r}"
        value = turn["value"]
        # Validation files of caption-list tasks hold the reference captions as a list.
        is_reference_list = (
            allow_reference_lists
            and expected == "gpt"
            and isinstance(value, list)
            and all(isinstance(v, str) for v in value)
        )
        if not isinstance(value, str) and not is_reference_list:
            return f"turn {k} has a {type(value).__name__} value, expected text"
        if expected == "gpt" and is_reference_list and (not value or not all(v.strip() for v in value)):
            return f"turn {k} (gpt) holds an empty reference list or an empty reference"
        if expected == "gpt" and isinstance(value, str) and not value.strip():
            return f"turn {k} (gpt) is an empty answer: there is nothing to learn or score"
    if (len(turns) - offset) % 2:
        return "ends with a human turn (nothing to learn from it)"
    return None


def _image_paths(value: Any) -> list[str] | None:
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    return None


def _image_token_problem(record: dict, paths: list[str] | None) -> str | None:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return None
    texts = [t["value"] for t in turns if isinstance(t, dict) and isinstance(t.get("value"), str)]
    n_tokens = sum(text.count(DEFAULT_IMAGE_TOKEN) for text in texts)
    if paths is None:
        return (
            f"{DEFAULT_IMAGE_TOKEN} appears {n_tokens} time(s) but the record has no image"
            if n_tokens
            else None
        )
    kept = turns[1:] if starts_with_gpt(record) else turns
    first = kept[0] if kept and isinstance(kept[0], dict) else {}
    if first.get("from") != "human" or DEFAULT_IMAGE_TOKEN not in str(first.get("value", "")):
        return f"has an image but no {DEFAULT_IMAGE_TOKEN} in the first human turn"
    if n_tokens > len(paths):
        return f"{DEFAULT_IMAGE_TOKEN} appears {n_tokens} times for {len(paths)} image(s)"
    return None


def check_records(
    records: Sequence[Any],
    image_folder: str | os.PathLike | None,
    tasks: Sequence[str] | None = None,
    source: str = "data",
    allow_reference_lists: bool = False,
    allow_duplicate_ids: bool = False,
) -> DataReport:
    """Check every record; image files under `image_folder` are opened and fully decoded (skipped when it is None).

    A record id used twice is a problem unless `allow_duplicate_ids` (training mixes whose ids name images).
    """
    report = DataReport(
        source=source,
        total=len(records),
        task_counts={t: 0 for t in tasks} if tasks is not None else {},
        tasks=list(tasks) if tasks is not None else None,
        images_checked=image_folder is not None,
    )
    problems = report.problems
    if not records:
        problems[NO_RECORDS].add(f"{source} holds no records (an empty list): nothing to train on or check")
    exists: dict[str, bool] = {}
    image_errors: dict[str, tuple[str, str] | None] = {}
    first_with_id: dict[str, int] = {}
    for index, record in enumerate(tqdm(records, desc="checking records", unit="rec", file=sys.stderr)):
        label = _label(index, record)
        if not isinstance(record, dict):
            problems[NOT_A_RECORD].add(f"{label} is a {type(record).__name__}")
            continue
        if record.get("id") is not None and not allow_duplicate_ids:
            # The scorer and inference key answers by str(id): 1 and "1" are the same question.
            key = str(record["id"])
            if key in first_with_id:
                problems[DUPLICATE_ID].add(f"{label}: id {record['id']!r} is also record {first_with_id[key]}'s")
            else:
                first_with_id[key] = index
        task = record.get("task")
        if not isinstance(task, str) or not task:
            problems[MISSING_TASK].add(label)
            report.task_counts["(no task)"] = report.task_counts.get("(no task)", 0) + 1
        else:
            report.task_counts[task] = report.task_counts.get(task, 0) + 1
            if tasks is not None and task not in tasks:
                problems[UNKNOWN_TASK].add(f"{label}: task {task!r}")
        conversation_issue = conversation_problem(record, allow_reference_lists)
        if conversation_issue:
            problems[BAD_CONVERSATION].add(f"{label}: {conversation_issue}")
        elif starts_with_gpt(record):
            report.dropped_first_turns.add(label)
        paths = None
        if "image" in record:
            paths = _image_paths(record["image"])
            if paths is None:
                problems[IMAGE_TOKEN].add(f"{label}: 'image' is {record['image']!r}, not a relative path")
                continue
        # A malformed conversation is reported once, not again as a misplaced <image>.
        reason = None if conversation_issue else _image_token_problem(record, paths)
        if reason:
            problems[IMAGE_TOKEN].add(f"{label}: {reason}")
        if image_folder is not None:
            for path in paths or []:
                full = os.path.join(image_folder, path)
                if full not in exists:
                    exists[full] = os.path.isfile(full)
                if not exists[full]:
                    problems[MISSING_IMAGE].add(f"{label}: {full}")
                    continue
                if full not in image_errors:
                    image_errors[full] = image_problem(full)
                if image_errors[full] is not None:
                    kind, reason = image_errors[full]
                    problems[kind].add(f"{label}: {reason}")
    return report


def image_problem(path: str) -> tuple[str, str] | None:
    """(problem kind, reason) when the image file cannot be fully decoded by the training loader, else None."""
    try:
        load_image(path, exif_orientation=False)
    except ImageTooLargeError as e:
        return TOO_LARGE_IMAGE, str(e)
    except (OSError, ValueError) as e:
        return UNREADABLE_IMAGE, str(e)
    return None


def check_file(
    path: str | os.PathLike,
    image_folder: str | os.PathLike | None,
    tasks: Sequence[str] | None = None,
    allow_reference_lists: bool = False,
    allow_duplicate_ids: bool = False,
) -> DataReport:
    """Load a data file (a JSON list of records; JSON Lines is refused, as training refuses it) and check it."""
    records = load_json(path)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    if image_folder is not None and not os.path.isdir(image_folder):
        what = "is a file, not a folder" if os.path.exists(image_folder) else "does not exist"
        raise FileNotFoundError(f"{image_folder}: the image folder {what}")
    return check_records(records, image_folder, tasks, str(path), allow_reference_lists, allow_duplicate_ids)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Check a LLaVA-format multi-task data file before training.")
    parser.add_argument("--data", required=True, help="JSON list of records with a 'task' field")
    parser.add_argument("--image-folder", help="root of the relative image paths (omit to skip file checks)")
    tasks = parser.add_mutually_exclusive_group()
    tasks.add_argument("--tasks", help="the expected task names A,B,...; other names are errors")
    tasks.add_argument("--task-preset", help="academic or chat")
    parser.add_argument(
        "--allow-reference-lists",
        action="store_true",
        help="accept a list of reference strings as the gpt answer (validation files of caption-list tasks)",
    )
    parser.add_argument(
        "--allow-duplicate-ids",
        action="store_true",
        help="accept a record id used by several records (training mixes whose ids name images, as LLaVA's "
        "665k mix); never for a validation file, whose answers are matched by id",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tasks = resolve_tasks(args.tasks, args.task_preset) if (args.tasks or args.task_preset) else None
        report = check_file(
            args.data, args.image_folder, tasks, args.allow_reference_lists, args.allow_duplicate_ids
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
