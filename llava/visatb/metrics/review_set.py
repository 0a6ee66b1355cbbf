"""A GPT-judged validation set in LLaVA-Bench-COCO's qa90 layout, and the chain's validation files made from it.

Three jsonl files: questions (question_id, image, text, category), image contexts (COCO: `captions` and
`instances` with boxes; in the wild: `caption`), and the reference (GPT-4) answers (question_id, text). Rule
prompts come from llava/eval/table/rule.json unless the set brings its own `rule.json`. A question's category
decides its task: the task of the same name, or, for qa90's own categories, conv -> conversation,
detail -> detail, complex -> complex_reasoning (the Chat preset's tasks). Every question must belong to a
judged task and every judged task needs questions: nothing is dropped without a word.

    python -m llava.visatb.metrics.review_set split --review-set data/llava-bench-coco --tasks conversation,detail,\
complex_reasoning --output-dir work/subsets/review      # {task}_val.json per task, for inference_visatb.py
    python -m llava.visatb.metrics.review_set from-val --val ToyCaption=data/toy/ToyCaption_val-150.json,... \
        --output-dir data/toy-review                       # a review set from LLaVA-format validation records

A review set is given as a folder holding the three files (qa90's names `qa90_questions.jsonl`,
`caps_boxes_coco2014_val_80.jsonl`, `qa90_gpt4_answer.jsonl`, or `questions.jsonl`, `context.jsonl`,
`answers_ref.jsonl`) and optionally `rule.json` and `images/`, or as `QUESTIONS,CONTEXT,REFERENCE[,RULES]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava.answers.jsonio import read_answers, read_jsonl
from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.eval_gpt_review_bench import DEFAULT_RULE_FILE, check_questions, load_rules, rule_category
from llava.utils import atomic_write_json, load_json

QA90_NAMES = ("qa90_questions.jsonl", "caps_boxes_coco2014_val_80.jsonl", "qa90_gpt4_answer.jsonl")
PLAIN_NAMES = ("questions.jsonl", "context.jsonl", "answers_ref.jsonl")
RULE_NAME = "rule.json"
IMAGES_NAME = "images"
# LLaVA-Bench-COCO's categories, by the Chat preset's task names.
QA90_CATEGORIES = {"conv": "conversation", "detail": "detail", "complex": "complex_reasoning"}


@dataclass(frozen=True)
class ReviewSet:
    """Where a review set's files are."""

    questions: Path
    context: Path
    reference: Path
    rules: Path
    image_folder: Path

    def to_json(self) -> dict[str, str]:
        return {
            name: str(getattr(self, name))
            for name in ("questions", "context", "reference", "rules", "image_folder")
        }


def locate_review_set(spec: str, image_folder: str | None = None, flag: str = "--review-set") -> ReviewSet:
    """A folder holding the three files, or `QUESTIONS,CONTEXT,REFERENCE[,RULES]`; every path must exist."""
    path = Path(spec)
    if "," not in spec and path.is_dir():
        for names in (QA90_NAMES, PLAIN_NAMES):
            if all((path / n).is_file() for n in names):
                files = [path / n for n in names]
                break
        else:
            raise FileNotFoundError(f"{flag} {spec}: the folder holds neither {', '.join(QA90_NAMES)} nor "
                                    f"{', '.join(PLAIN_NAMES)}")  # fmt: skip
        rules = path / RULE_NAME if (path / RULE_NAME).is_file() else DEFAULT_RULE_FILE
        images = Path(image_folder) if image_folder else path / IMAGES_NAME
    else:
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) not in (3, 4) or not all(parts):
            raise ValueError(
                f"{flag} {spec!r}: give a folder or QUESTIONS,CONTEXT,REFERENCE[,RULES] (jsonl files)"
            )
        files = [Path(p) for p in parts[:3]]
        rules = Path(parts[3]) if len(parts) == 4 else DEFAULT_RULE_FILE
        images = Path(image_folder) if image_folder else files[0].parent / IMAGES_NAME
        for name, file in zip(("questions", "context", "reference answers"), files):
            if not file.is_file():
                raise FileNotFoundError(f"{flag}: {name} file {file}: no such file")
        if not rules.is_file():
            raise FileNotFoundError(f"{flag}: rule file {rules}: no such file")
    if not images.is_dir():
        raise FileNotFoundError(
            f"{flag} {spec}: image folder {images}: no such folder (give --review-image-folder)"
        )
    return ReviewSet(*(f.resolve() for f in files), rules.resolve(), images.resolve())


def task_of_category(category: str, tasks: Sequence[str]) -> str | None:
    """The task a question category belongs to: the task of that name, else qa90's alias (conv -> conversation)."""
    if category in tasks:
        return category
    alias = QA90_CATEGORIES.get(category)
    return alias if alias in tasks else None


def load_questions_by_task(
    review_set: ReviewSet, tasks: Sequence[str], check_images: bool = True
) -> dict[str, list[dict]]:
    """The questions of each judged task, checked: fields, known categories, a reference answer, a context,
    a rule and (with `check_images`) an image file for every question; every task gets at least one question."""
    questions = read_jsonl(review_set.questions)
    check_questions(questions, review_set.questions)
    references = {str(a["question_id"]): a for a in read_answers(review_set.reference)}
    contexts = {c["image"]: c for c in read_jsonl(review_set.context) if "image" in c}
    rules = load_rules(review_set.rules)
    by_task: dict[str, list[dict]] = {t: [] for t in tasks}
    seen: set[str] = set()
    for n, question in enumerate(questions, start=1):
        qid = str(question["question_id"])
        where = f"{review_set.questions}: question {n} (question_id {qid})"
        if qid in seen:
            raise ValueError(f"{where}: the question_id appears twice")
        seen.add(qid)
        task = task_of_category(str(question["category"]), tasks)
        if task is None:
            raise ValueError(f"{where}: category {question['category']!r} is none of the judged tasks "
                             f"({', '.join(tasks)}; qa90's conv/detail/complex name conversation/detail/"
                             "complex_reasoning)")  # fmt: skip
        if qid not in references:
            raise ValueError(f"{review_set.reference}: no reference answer for question_id {qid}")
        context = contexts.get(question["image"])
        if context is None:
            raise ValueError(
                f"{review_set.context}: no context for image {question['image']!r} (question_id {qid})"
            )
        rule = rule_category(question, context)
        if rule not in rules:
            raise ValueError(
                f"{review_set.rules}: no rule {rule!r} (question_id {qid}); rules: {', '.join(rules)}"
            )
        if check_images and not (review_set.image_folder / question["image"]).is_file():
            raise FileNotFoundError(
                f"{where}: image {review_set.image_folder / question['image']}: no such file"
            )
        by_task[task].append(question)
    empty = [t for t, qs in by_task.items() if not qs]
    if empty:
        raise ValueError(f"{review_set.questions}: no question of judged task(s) {', '.join(empty)}")
    return by_task


def val_records(review_set: ReviewSet, task: str, questions: Sequence[dict]) -> list[dict[str, Any]]:
    """LLaVA-format validation records of one task's questions (question_id and category kept, the reference
    answer as the gpt turn, the image by absolute path), as inference_visatb.py reads them."""
    references = {str(a["question_id"]): a["text"] for a in read_answers(review_set.reference)}
    records = []
    for question in questions:
        qid = question["question_id"]
        records.append({
            "id": f"{task}-{qid}", "task": task, "question_id": qid, "category": question["category"],
            "image": str(review_set.image_folder / question["image"]),
            "conversations": [{"from": "human", "value": f"{DEFAULT_IMAGE_TOKEN}\n{question['text']}"},
                              {"from": "gpt", "value": references[str(qid)]}],
        })  # fmt: skip
    return records


def val_file_path(output_dir: str | os.PathLike, task: str) -> Path:
    return Path(output_dir) / f"{task}_val.json"


def write_val_files(
    review_set: ReviewSet, tasks: Sequence[str], output_dir: str | os.PathLike
) -> dict[str, Path]:
    """`{task}_val.json` per judged task in `output_dir`; returns them by task."""
    by_task = load_questions_by_task(review_set, tasks)
    files = {}
    for task in tasks:
        files[task] = val_file_path(output_dir, task)
        atomic_write_json(files[task], val_records(review_set, task, by_task[task]))
        print(f"{task}: {len(by_task[task])} question(s) -> {files[task]}")
    return files


def review_set_from_val(val_files: Mapping[str, str | os.PathLike], output_dir: str | os.PathLike,
                        rule_from: str = "conv") -> dict[str, int]:  # fmt: skip
    """Write a review set (questions.jsonl, context.jsonl, answers_ref.jsonl, rule.json) from LLaVA-format
    validation records, one category per task: the question is the human turn without the image marker, the
    reference answer is the gpt turn (the first one of a list), and an image's context lists the reference
    answers of its questions. Every category's rule is rule.json's `rule_from` rule. Returns counts by task."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    questions, references, captions = [], [], {}
    counts = {}
    for task, path in val_files.items():
        records = load_json(path)
        if not isinstance(records, list) or not records:
            raise ValueError(f"{path}: expected a non-empty JSON list of validation records")
        for n, record in enumerate(records):
            turns = record.get("conversations") if isinstance(record, dict) else None
            if not isinstance(turns, list) or len(turns) < 2 or not record.get("image"):
                raise ValueError(f"{path}: record {n} needs an 'image' and a human and a gpt turn")
            answer = turns[1]["value"]
            answer = answer[0] if isinstance(answer, list) else answer
            qid = len(questions)
            text = turns[0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
            questions.append({"question_id": qid, "image": record["image"], "text": text, "category": task})
            references.append({"question_id": qid, "text": answer, "answer_id": f"reference-{qid}"})
            captions.setdefault(record["image"], []).append(answer)
        counts[task] = len(records)
    rules = load_rules(DEFAULT_RULE_FILE)
    if rule_from not in rules:
        raise ValueError(f"{DEFAULT_RULE_FILE}: no rule {rule_from!r}; rules: {', '.join(rules)}")
    contexts = [{"image": image, "captions": texts, "instances": []} for image, texts in captions.items()]
    for name, records in zip(PLAIN_NAMES, (questions, contexts, references)):
        (out / name).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
        )
    atomic_write_json(out / RULE_NAME, {task: rules[rule_from] for task in val_files})
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    split = commands.add_parser("split", help="write {task}_val.json per judged task for inference_visatb.py")
    split.add_argument("--review-set", required=True, help="folder, or QUESTIONS,CONTEXT,REFERENCE[,RULES]")
    split.add_argument("--review-image-folder", help="image root (default: images/ beside the questions)")
    split.add_argument("--tasks", required=True, help="the judged tasks A,B,...")
    split.add_argument("--output-dir", required=True)
    make = commands.add_parser(
        "from-val", help="a review set from LLaVA-format validation files (e.g. the toy's)"
    )
    make.add_argument("--val", required=True, help="TASK=file,...: one validation file per category")
    make.add_argument("--output-dir", required=True)
    make.add_argument(
        "--rule-from", default="conv", help="the rule of llava/eval/table/rule.json every category uses"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            review_set = locate_review_set(args.review_set, args.review_image_folder)
            write_val_files(
                review_set, [t.strip() for t in args.tasks.split(",") if t.strip()], args.output_dir
            )
        else:
            pairs = {}
            for pair in (p.strip() for p in args.val.split(",")):
                task, sep, path = pair.partition("=")
                if not sep or not task or not path:
                    raise ValueError(f"--val: {pair!r} is not TASK=FILE")
                pairs[task] = path
            counts = review_set_from_val(pairs, args.output_dir, args.rule_from)
            print(f"review set in {args.output_dir}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
