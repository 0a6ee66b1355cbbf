"""Send one message to a model through the controller and print the streamed answer (upstream's test_message).

    python -m llava.serve.test_message --controller-address http://localhost:21001 --model-name llava-v1.5-7b \
        [--image-file view.jpg] [--message "What is unusual about this image?"]

Checks a deployment end to end from the command line: the controller's model list, the worker address it
gives, and the worker's stream.
"""

from __future__ import annotations

import argparse
import json
import sys

import requests

from llava.generation import infer_conv_mode, open_image
from llava.serve.common import image_to_base64
from llava.serve.gradio_web_server import stop_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controller-address", default="http://localhost:21001")
    parser.add_argument("--worker-address", default=None, help="ask this worker directly, not the controller's")
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--message", default="Tell me a story with more than 1000 words.")
    parser.add_argument("--image-file", default=None)
    parser.add_argument("--conv-mode", default=None, help="default: guessed from the model name")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args(argv)
    from llava.conversation import get_conv_template

    try:
        controller = args.controller_address.rstrip("/")
        address = args.worker_address
        if address is None:
            requests.post(controller + "/refresh_all_workers", timeout=30).raise_for_status()
            models = requests.post(controller + "/list_models", timeout=10).json()["models"]
            print(f"models: {models}")
            address = requests.post(controller + "/get_worker_address", json={"model": args.model_name},
                                    timeout=10).json()["address"]  # fmt: skip
            if not address:
                print(f"error: no worker serves model {args.model_name!r}", file=sys.stderr)
                return 1
        print(f"worker: {address}")
        conv = get_conv_template(args.conv_mode or infer_conv_mode(args.model_name))
        images = [image_to_base64(open_image(args.image_file))] if args.image_file else []
        conv.append_message(conv.roles[0], ("<image>\n" if images else "") + args.message)
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        payload = {"model": args.model_name, "prompt": prompt, "max_new_tokens": args.max_new_tokens,
                   "temperature": args.temperature, "stop": stop_for(conv), "images": images}  # fmt: skip
        r = requests.post(address.rstrip("/") + "/worker_generate_stream", json=payload, stream=True, timeout=(10, 600))
        print(f"{conv.roles[0]}: {args.message}\n{conv.roles[1]}: ", end="", flush=True)
        shown = ""
        for piece in r.iter_lines(decode_unicode=False, delimiter=b"\0"):
            if not piece:
                continue
            data = json.loads(piece.decode())
            if data.get("error_code", 0) != 0:
                print(f"\nerror ({data['error_code']}): {data['text']}", file=sys.stderr)
                return 1
            answer = data["text"][len(prompt):].strip()
            print(answer[len(shown):] if answer.startswith(shown) else "\n" + answer, end="", flush=True)
            shown = answer
        print()
    except (requests.RequestException, ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
