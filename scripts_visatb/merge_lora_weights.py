"""Merge a LoRA LLaVA checkpoint (adapter + non_lora_trainables.bin) into its base; save a full checkpoint.

    python scripts_visatb/merge_lora_weights.py --model-path checkpoints/llava-v1.5-7b-lora \
        --model-base lmsys/vicuna-7b-v1.5 --save-model-path checkpoints/llava-v1.5-7b-merged
"""

from __future__ import annotations

import argparse
import os
import sys

from llava.mm_utils import get_model_name_from_path
from llava.model.builder import load_pretrained_model


def merge_lora(model_path: str, model_base: str, save_model_path: str) -> None:
    """Load base + LoRA through `load_pretrained_model` (which merges) and save the result with its tokenizer."""
    if not os.path.isfile(os.path.join(model_path, "adapter_config.json")):
        raise FileNotFoundError(f"{model_path} has no adapter_config.json: it is not a LoRA checkpoint")
    model_name = get_model_name_from_path(model_path)
    # load_pretrained_model picks its loading path by name; this folder is known to be a LoRA LLaVA checkpoint.
    for required in ("llava", "lora"):
        if required not in model_name.lower():
            model_name = f"{model_name}-{required}"
    tokenizer, model, _, _ = load_pretrained_model(model_path, model_base, model_name, device="cpu")
    model.save_pretrained(save_model_path)
    tokenizer.save_pretrained(save_model_path)
    print(f"merged {model_path} into {model_base}: saved to {save_model_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True, help="the LoRA checkpoint folder (output_dir of training)")
    parser.add_argument("--model-base", required=True, help="the base language model it was trained from")
    parser.add_argument("--save-model-path", required=True, help="where to write the merged checkpoint")
    args = parser.parse_args(argv)
    try:
        merge_lora(args.model_path, args.model_base, args.save_model_path)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
