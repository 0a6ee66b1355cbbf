r"""Answer ScienceQA (LLaVA's `llava_test_CQM-A.json`: a JSON list of `{"id", "image"?, "conversations"}`).

The question is the first turn's value with `<image>` taken out (the image, when the problem has one,
goes first as in training); text-only problems are asked without an image. `--single-pred-prompt` adds
LLaVA-1.5's instruction to answer with the option's letter. The answer's `prompt` is what upstream
records: `<image>\n` (image problems only), the question, then the instruction if one was added. Images
are resized and centre-cropped by the image processor, as upstream's module does (no padding).

    python -m llava.eval.model_vqa_science --model-path liuhaotian/llava-v1.5-7b \
        --question-file llava_test_CQM-A.json --image-folder images/test \
        --answers-file answers/llava-v1.5-7b.jsonl --single-pred-prompt --temperature 0 --conv-mode vicuna_v1
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from llava.answers.benchmark_answers import EvalItem, generation_parser, main_with
from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.generation import image_preprocessing
from llava.utils import load_json

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."


def load_questions(question_file: str) -> list[dict[str, Any]]:
    """Read the JSON list of problems, checking each has an id, a first turn with a string value, and a valid image."""
    problems = load_json(question_file)
    if not isinstance(problems, list):
        raise ValueError(f"{question_file}: expected a JSON list of problems, found a {type(problems).__name__}")
    for n, problem in enumerate(problems, start=1):
        if not isinstance(problem, dict) or "id" not in problem:
            raise ValueError(f"{question_file}: problem {n} is not an object with an 'id' field")
        where = f"{question_file}: problem {n} (id {problem['id']!r})"
        turns = problem.get("conversations")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict) or not isinstance(turns[0].get("value"), str):
            raise ValueError(f"{where}: 'conversations' must be a list whose first turn has a string 'value' (the question)")
        if "image" in problem and (not isinstance(problem["image"], str) or not problem["image"]):
            raise ValueError(f"{where}: 'image' must be a non-empty image path when present")
    return problems


def item_maker(args: argparse.Namespace) -> Callable[[dict[str, Any], int], list[EvalItem]]:
    """One item per problem, with or without its image, with the single-prediction instruction if asked."""

    def to_items(problem: dict[str, Any], position: int) -> list[EvalItem]:
        question = problem["conversations"][0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        has_image = "image" in problem
        prompt = f"{DEFAULT_IMAGE_TOKEN}\n{question}" if has_image else question
        if args.single_pred_prompt:
            question = f"{question}\n{SINGLE_PRED_PROMPT}"
            prompt = f"{prompt}\n{SINGLE_PRED_PROMPT}"
        return [
            EvalItem(
                question_id=problem["id"],
                question=question,
                prompt=prompt,
                source=f"{args.question_file}: problem {position + 1} (id {problem['id']!r})",
                image_file=os.path.join(args.image_folder, problem["image"]) if has_image else None,
            )
        ]

    return to_items


def build_parser() -> argparse.ArgumentParser:
    """LLaVA's flags with upstream's defaults for this module."""
    parser = generation_parser(__doc__, conv_mode="llava_v0", temperature=0.2, max_new_tokens=1024)
    parser.add_argument(
        "--single-pred-prompt", "--single_pred_prompt", dest="single_pred_prompt", action="store_true",
        help=f"append {SINGLE_PRED_PROMPT!r} to every question",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Upstream's module centre-crops (the processor's own preprocessing), whatever the checkpoint's
    # image_aspect_ratio; published LLaVA-1.5 scores come from that.
    with image_preprocessing("square"):
        return main_with(build_parser(), argv, load_questions, item_maker)


if __name__ == "__main__":
    sys.exit(main())
