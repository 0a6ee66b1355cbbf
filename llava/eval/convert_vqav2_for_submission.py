r"""VQAv2: LLaVA answers on test-dev to the EvalAI submission file (normalised answers for every test question).

The server scores test-dev but expects an entry for every question of test2015; questions outside the
answered split get an empty answer, as LLaVA-1.5 submits them.

    python -m llava.eval.convert_vqav2_for_submission --dir ./playground/data/eval/vqav2 \
        --split llava_vqav2_mscoco_test-dev2015 --ckpt <model>
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.answers.jsonio import read_answers, read_jsonl
from llava.eval.vqa_normalize import normalize_answer
from llava.utils import atomic_write_json


def convert_vqav2(answers: Sequence[dict[str, Any]], test_questions: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """[{question_id, answer}] for every test question, and how many of them had no answer (left empty)."""
    text_by_id = {str(a["question_id"]): a["text"] for a in answers}
    test_ids = {str(q["question_id"]) for q in test_questions}
    strangers = [qid for qid in text_by_id if qid not in test_ids]
    if strangers:
        raise ValueError(f"{len(strangers)} answer(s) are for questions outside the test set, e.g. {strangers[0]}")
    submission = []
    for question in test_questions:
        text = text_by_id.get(str(question["question_id"]))
        submission.append({"question_id": question["question_id"], "answer": normalize_answer(text) if text is not None else ""})
    return submission, len(test_questions) - len(text_by_id)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="./playground/data/eval/vqav2", help="the VQAv2 eval folder")
    parser.add_argument("--ckpt", required=True, help="model name: answers/<split>/<ckpt>/merge.jsonl")
    parser.add_argument("--split", required=True, help="answered split, e.g. llava_vqav2_mscoco_test-dev2015")
    parser.add_argument("--test-file", help="all test questions (default: <dir>/llava_vqav2_mscoco_test2015.jsonl)")
    parser.add_argument("--result-file", help="answers (default: <dir>/answers/<split>/<ckpt>/merge.jsonl)")
    parser.add_argument("--result-upload-file", help="output (default: <dir>/answers_upload/<split>/<ckpt>.json)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.dir)
    result_file = args.result_file or root / "answers" / args.split / args.ckpt / "merge.jsonl"
    test_file = args.test_file or root / "llava_vqav2_mscoco_test2015.jsonl"
    upload_file = args.result_upload_file or root / "answers_upload" / args.split / f"{args.ckpt}.json"
    try:
        answers = read_answers(result_file)
        test_questions = read_jsonl(test_file)
        for n, question in enumerate(test_questions, start=1):
            if "question_id" not in question:
                raise ValueError(f"{test_file}: question {n} has no 'question_id' field")
        submission, unanswered = convert_vqav2(answers, test_questions)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    atomic_write_json(upload_file, submission, indent=None)
    print(f"answers: {len(answers)}, test questions: {len(test_questions)} ({unanswered} left empty); wrote {upload_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
