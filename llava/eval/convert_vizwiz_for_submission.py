r"""VizWiz: LLaVA answers on the test split to the EvalAI submission file ([{image, answer}], normalised).

    python -m llava.eval.convert_vizwiz_for_submission --annotation-file llava_test.jsonl \
        --result-file answers.jsonl --result-upload-file answers_upload/<model>.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from llava.answers.jsonio import read_answers, read_jsonl
from llava.eval.vqa_normalize import normalize_answer
from llava.utils import atomic_write_json


def convert_vizwiz(answers: Sequence[dict[str, Any]], test_questions: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """[{image, answer}] in question order; every test question must have an answer."""
    text_by_id = {str(a["question_id"]): a["text"] for a in answers}
    submission = []
    for n, question in enumerate(test_questions, start=1):
        if "question_id" not in question or "image" not in question:
            raise ValueError(f"test question {n} lacks 'question_id' or 'image'")
        text = text_by_id.get(str(question["question_id"]))
        if text is None:
            raise ValueError(f"test question {question['question_id']} ({question['image']}) has no answer")
        submission.append({"image": question["image"], "answer": normalize_answer(text)})
    return submission


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation-file", required=True, help="the test questions, llava_test.jsonl")
    parser.add_argument("--result-file", required=True, help="answers jsonl")
    parser.add_argument("--result-upload-file", required=True, help="submission JSON to write")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        answers = read_answers(args.result_file)
        test_questions = read_jsonl(args.annotation_file)
        submission = convert_vizwiz(answers, test_questions)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    atomic_write_json(args.result_upload_file, submission, indent=None)
    print(f"answers: {len(answers)}, test questions: {len(test_questions)}; wrote {args.result_upload_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
