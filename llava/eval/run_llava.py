"""Ask a LLaVA model one question about one image (or several) and print the answer.

    python -m llava.eval.run_llava --model-path liuhaotian/llava-v1.5-7b --image-file view.jpg \
        --query "What is unusual about this image?"

Several images: --image-file a.jpg,b.jpg (split on --sep), placed where the query says
<image-placeholder>, or all before the query.
"""

from __future__ import annotations

import argparse
import sys

from llava.generation import LlavaGenerator, infer_conv_mode, open_image
from llava.mm_utils import choose_conv_mode, get_model_name_from_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Answer one query about an image with a LLaVA model.")
    parser.add_argument("--model-path", "--model_path", dest="model_path", required=True)
    parser.add_argument("--model-base", "--model_base", dest="model_base", default=None)
    parser.add_argument("--image-file", "--image_file", dest="image_file", required=True)
    parser.add_argument("--query", required=True)
    parser.add_argument(
        "--conv-mode", "--conv_mode", dest="conv_mode", default=None,
        help="conversation template (default: the one the checkpoint records, else guessed from its name)",
    )  # fmt: skip
    parser.add_argument("--sep", default=",", help="separator between several --image-file paths")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=None)
    parser.add_argument("--num_beams", "--num-beams", dest="num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int, default=512)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    conv_mode, why = choose_conv_mode(args.model_path, args.conv_mode, infer_conv_mode)
    guessed = infer_conv_mode(get_model_name_from_path(args.model_path))
    if args.conv_mode is not None and args.conv_mode != guessed and "trained with" not in why:
        print(
            f"[WARNING] the auto inferred conversation mode is {guessed}, while `--conv-mode` is "
            f"{args.conv_mode}, using {args.conv_mode}",
            file=sys.stderr,
        )
    print(f"[conversation template {conv_mode!r}: {why}]", file=sys.stderr)
    try:
        images = [open_image(path) for path in args.image_file.split(args.sep)]
        generator = LlavaGenerator.from_pretrained(
            args.model_path, args.model_base, conv_mode=conv_mode, device=args.device,
            temperature=args.temperature, top_p=args.top_p, num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens, verbose=False,
        )  # fmt: skip
        answer = generator.generate([args.query], [images])[0]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
