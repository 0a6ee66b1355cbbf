r"""Answer a jsonl question file (`{"question_id", "image", "text", ...}` per line) in batches: LLaVA's answer jsonl.

The short-answer benchmarks (VQAv2, GQA, VizWiz, TextVQA, POPE, MME, SEED-Bench) go through this module.
`prompt` in each answer is the question's `text` as written in the question file.

    python -m llava.eval.model_vqa_loader --model-path liuhaotian/llava-v1.5-7b \
        --question-file llava_textvqa_val_v051_ocr.jsonl --image-folder train_images \
        --answers-file answers/llava-v1.5-7b.jsonl --temperature 0 --conv-mode vicuna_v1 \
        [--num-chunks 4 --chunk-idx 0] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from llava.answers.benchmark_answers import EvalItem, generation_parser, main_with
from llava.answers.jsonio import read_jsonl


def load_questions(question_file: str) -> list[dict[str, Any]]:
    """Read the jsonl questions, checking each has a question_id, a string `text` and an `image` path."""
    questions = read_jsonl(question_file)
    for n, question in enumerate(questions, start=1):
        if "question_id" not in question:
            raise ValueError(f"{question_file}: question {n} has no 'question_id' field")
        where = f"{question_file}: question {n} (question_id {question['question_id']!r})"
        if not isinstance(question.get("text"), str):
            raise ValueError(f"{where}: 'text' must be a string")
        if not isinstance(question.get("image"), str) or not question["image"]:
            raise ValueError(f"{where}: 'image' must be a non-empty image path")
    return questions


def item_maker(args: argparse.Namespace) -> Callable[[dict[str, Any], int], list[EvalItem]]:
    """One item per question: its text, about its image under --image-folder."""

    def to_items(question: dict[str, Any], position: int) -> list[EvalItem]:
        return [
            EvalItem(
                question_id=question["question_id"],
                question=question["text"],
                prompt=question["text"],
                source=f"{args.question_file}: question {position + 1} (question_id {question['question_id']!r})",
                image_file=os.path.join(args.image_folder, question["image"]),
            )
        ]

    return to_items


def build_parser() -> argparse.ArgumentParser:
    """LLaVA's flags with upstream's defaults for this module."""
    return generation_parser(__doc__, conv_mode="llava_v1", temperature=0.2, max_new_tokens=128)


def main(argv: Sequence[str] | None = None) -> int:
    return main_with(build_parser(), argv, load_questions, item_maker)


if __name__ == "__main__":
    sys.exit(main())
