r"""Answer open-ended questions about images (LLaVA-Bench, LLaVA-COCO, MM-Vet): LLaVA's answer jsonl.

Same question format as `model_vqa_loader` (`{"question_id", "image", "text", ...}` per line), with
upstream's defaults for long answers: up to 1024 new tokens, temperature 0.2 (the scripts pass 0). Images
are resized and centre-cropped by the image processor, as upstream's module does, even for a checkpoint
trained with `image_aspect_ratio pad` (`model_vqa_loader` pads).

    python -m llava.eval.model_vqa --model-path liuhaotian/llava-v1.5-7b --question-file questions.jsonl \
        --image-folder images --answers-file answers/llava-v1.5-7b.jsonl --temperature 0 --conv-mode vicuna_v1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.answers.benchmark_answers import generation_parser, main_with
from llava.eval.model_vqa_loader import item_maker, load_questions
from llava.generation import image_preprocessing


def build_parser() -> argparse.ArgumentParser:
    """LLaVA's flags with upstream's defaults for this module."""
    return generation_parser(__doc__, conv_mode="llava_v1", temperature=0.2, max_new_tokens=1024)


def main(argv: Sequence[str] | None = None) -> int:
    # Upstream's module centre-crops (the processor's own preprocessing), whatever the checkpoint's
    # image_aspect_ratio; published LLaVA-1.5 scores come from that.
    with image_preprocessing("square"):
        return main_with(build_parser(), argv, load_questions, item_maker)


if __name__ == "__main__":
    sys.exit(main())
