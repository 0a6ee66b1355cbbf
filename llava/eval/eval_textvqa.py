"""TextVQA: the standard VQA soft accuracy of LLaVA answers against TextVQA_0.5.1_val.json.

    python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-file answers.jsonl
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llava.answers.jsonio import read_answers
from llava.eval.vqa_normalize import vqa_accuracy
from llava.utils import load_json

_OCR_LINE_PREFIX = "Reference OCR token:"
_QUESTION_IN_OCR_PROMPT = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def extract_question(prompt: str) -> str:
    """The lower-cased TextVQA question inside a LLaVA prompt (drops the OCR-token line and the answer instruction)."""
    if prompt.startswith("OCR tokens: "):
        match = _QUESTION_IN_OCR_PROMPT.search(prompt)
        if match is None:
            raise ValueError(f"prompt starts with 'OCR tokens:' but has no 'Question: ... Short answer:': {prompt!r}")
        return match.group(1).lower()
    lines = [line for line in prompt.split("\n") if not line.startswith(_OCR_LINE_PREFIX)]
    if len(lines) == 2:  # question, then the answer-format instruction
        return lines[0].lower()
    if len(lines) == 1:
        return lines[0].lower()
    raise ValueError(f"cannot find the question in prompt {prompt!r}")


def load_annotations(annotation_file: str | os.PathLike) -> list[dict[str, Any]]:
    """The `data` records of a TextVQA annotation file, each checked for image_id, question and answers."""
    content = load_json(annotation_file)
    if not isinstance(content, dict) or not isinstance(content.get("data"), list):
        raise ValueError(f"{annotation_file}: expected an object with a 'data' list (TextVQA format)")
    for i, record in enumerate(content["data"]):
        for field in ("image_id", "question", "answers"):
            if field not in record:
                raise ValueError(f"{annotation_file}: data[{i}] has no {field!r} field")
    return content["data"]


def evaluate_textvqa(annotations: Sequence[dict[str, Any]], answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Soft accuracy (percent) of answers matched to annotations by (image id, question) or by question id."""
    by_image_question = {(str(a["image_id"]), a["question"].lower()): a for a in annotations}
    by_question_id = {str(a["question_id"]): a for a in annotations if "question_id" in a}
    scores = []
    for n, answer in enumerate(tqdm(answers, desc="TextVQA", disable=len(answers) < 1000), start=1):
        for field in ("question_id", "prompt", "text"):
            if field not in answer:
                raise ValueError(f"answer {n} has no {field!r} field")
        qid = str(answer["question_id"])
        # LLaVA's question file uses the image id as question_id, so the question text disambiguates.
        annotation = by_image_question.get((qid, extract_question(answer["prompt"]))) or by_question_id.get(qid)
        if annotation is None:
            raise ValueError(f"answer {n} (question_id {qid!r}) matches no annotation by image id and question")
        scores.append(vqa_accuracy(answer["text"], annotation["answers"]))
    if not scores:
        raise ValueError("no answers to score")
    return {"samples": len(scores), "accuracy": 100.0 * sum(scores) / len(scores)}


def evaluate_file(annotation_file: str | os.PathLike, result_file: str | os.PathLike) -> dict[str, Any]:
    """Score one answers jsonl against a TextVQA annotation file."""
    answers = read_answers(result_file, ("question_id", "prompt", "text"))
    try:
        return evaluate_textvqa(load_annotations(annotation_file), answers)
    except ValueError as e:
        raise ValueError(f"{result_file}: {e}") from e


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    parser.add_argument("--result-file", help="one answers jsonl")
    parser.add_argument("--result-dir", help="score every .jsonl in this folder")
    args = parser.parse_args(argv)
    if not args.result_file and not args.result_dir:
        parser.error("give --result-file or --result-dir")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result_files = [Path(args.result_file)] if args.result_file else []
    try:
        if args.result_dir:
            if not Path(args.result_dir).is_dir():
                raise FileNotFoundError(f"{args.result_dir}: no such folder")
            result_files += sorted(Path(args.result_dir).glob("*.jsonl"))
            if not result_files:
                raise FileNotFoundError(f"{args.result_dir}: no .jsonl answer files")
        for result_file in result_files:
            result = evaluate_file(args.annotation_file, result_file)
            print(result_file.stem)
            print(f"Samples: {result['samples']}\nAccuracy: {result['accuracy']:.2f}%\n")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
