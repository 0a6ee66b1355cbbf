"""Chat with a LLaVA model about an image in the terminal, with the answer streamed token by token.

    python -m llava.serve.cli --model-path liuhaotian/llava-v1.5-7b --image-file view.jpg [--load-4bit]

An empty line, end of input (Ctrl-D) or Ctrl-C at the prompt ends the chat.
"""

from __future__ import annotations

import argparse
import sys

from transformers import TextStreamer

from llava.generation import LlavaGenerator, infer_conv_mode, open_image
from llava.mm_utils import choose_conv_mode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Chat with a LLaVA model about an image.")
    parser.add_argument("--model-path", "--model_path", dest="model_path", required=True)
    parser.add_argument("--model-base", "--model_base", dest="model_base", default=None)
    parser.add_argument("--image-file", "--image_file", dest="image_file", required=True)
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument(
        "--conv-mode", "--conv_mode", dest="conv_mode", default=None,
        help="conversation template (default: the one the checkpoint records, else guessed from its name)",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=512)
    parser.add_argument("--debug", action="store_true", help="print the prompt and answer after each turn")
    quantise = parser.add_mutually_exclusive_group()
    quantise.add_argument("--load-8bit", "--load_8bit", dest="load_8bit", action="store_true",
                          help="load the language model in 8 bits (bitsandbytes, CUDA only)")
    quantise.add_argument("--load-4bit", "--load_4bit", dest="load_4bit", action="store_true",
                          help="load the language model in 4 bits, NF4 (bitsandbytes, CUDA only)")  # fmt: skip
    return parser


def chat(generator: LlavaGenerator, image, debug: bool = False) -> None:
    """Read questions from stdin until an empty line or EOF, streaming each answer to stdout."""
    conversation = generator.new_conversation()
    user, assistant = conversation.roles
    streamer = TextStreamer(generator.tokenizer, skip_prompt=True, skip_special_tokens=True)
    while True:
        try:
            message = input(f"{user}: ")
        except (EOFError, KeyboardInterrupt):
            print()
            message = ""
        if not message.strip():
            print("exit...")
            return
        print(f"{assistant}: ", end="", flush=True)
        answer = generator.stream_chat(conversation, message, image=image, streamer=streamer)
        if debug:
            print("\n", {"prompt": conversation.get_prompt(), "outputs": answer}, "\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        image = open_image(args.image_file)
        conv_mode, why = choose_conv_mode(args.model_path, args.conv_mode, infer_conv_mode)
        print(f"[conversation template {conv_mode!r}: {why}]", file=sys.stderr)
        generator = LlavaGenerator.from_pretrained(
            args.model_path, args.model_base, conv_mode=conv_mode, device=args.device,
            temperature=args.temperature, max_new_tokens=args.max_new_tokens, load_8bit=args.load_8bit,
            load_4bit=args.load_4bit,
        )  # fmt: skip
        chat(generator, image, debug=args.debug)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
