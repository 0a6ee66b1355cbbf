"""The web demo: chat about an image with any model the controller knows, the answer streamed as it comes.

    python -m llava.serve.gradio_web_server --controller-url http://localhost:10000 --model-list-mode reload

The page asks the controller for the models (/refresh_all_workers, /list_models), the chosen model's worker
(/get_worker_address) and streams that worker's /worker_generate_stream, as upstream LLaVA's demo does. It
makes no other network request: gradio's analytics are off, the fonts are the system's, and a public share
link is made only with --share.
"""

from __future__ import annotations

import os

# Before gradio is imported anywhere: it reads these at import time.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import requests  # noqa: E402
from PIL import Image  # noqa: E402

from llava.constants import DEFAULT_IMAGE_TOKEN  # noqa: E402
from llava.conversation import Conversation, SeparatorStyle, get_conv_template  # noqa: E402
from llava.serve.common import SERVER_ERROR_MSG, build_logger, image_to_base64  # noqa: E402

logger = build_logger("gradio_web_server")

# Upstream's limits on what one turn may carry.
MAX_QUESTION_CHARS = 1536
MAX_OUTPUT_TOKENS = 1536
CURSOR = "▌"
TITLE = "# LLaVA: Large Language and Vision Assistant (VisATB)"


def conv_mode_for(model_name: str) -> str:
    """The conversation template upstream's demo picks for a model name."""
    name = model_name.lower()
    if "llava" in name:
        if "llama-2" in name:
            return "llava_llama_2"
        if "v1" in name:
            return "v1_mmtag" if "mmtag" in name else "llava_v1"
        if "mpt" in name:
            return "mpt"
        return "v0_mmtag" if "mmtag" in name else "llava_v0"
    if "llama-2" in name:
        return "llama_2"
    return "vicuna_v1"


def stop_for(conv: Conversation) -> str | None:
    """The stop string the demo sends with a request (upstream: sep for single/MPT styles, else sep2)."""
    return conv.sep if conv.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.MPT) else conv.sep2


def get_model_list(controller_url: str, timeout: float = 10.0) -> list[str]:
    """The models the controller's workers serve, after asking every worker again; [] if it cannot be reached."""
    try:
        requests.post(controller_url + "/refresh_all_workers", timeout=timeout).raise_for_status()
        r = requests.post(controller_url + "/list_models", timeout=timeout)
        r.raise_for_status()
        return sorted(r.json()["models"])
    except (requests.RequestException, ValueError, KeyError) as e:
        logger.error(f"cannot get the model list from the controller {controller_url}: {e}")
        return []


def image_digest(image: Image.Image) -> str:
    return hashlib.md5(image.tobytes()).hexdigest()


def new_state() -> dict:
    """One browser session: the conversation (its template is set at the first question) and its image."""
    return {"conv": None, "image": None, "image_digest": None, "model": None}


def chatbot_messages(state: dict) -> list[dict]:
    """The conversation as gradio's chatbot messages."""
    conv = state.get("conv")
    if conv is None:
        return []
    out = []
    for user, assistant in conv.to_gradio_chatbot():
        out.append({"role": "user", "content": user})
        if assistant is not None:
            out.append({"role": "assistant", "content": assistant})
    return out


def add_text(state: dict, text: str, image: Image.Image | None, model: str | None, conv_mode: str | None = None):
    """Add the user's question (with the image on the first turn) and leave the answer open."""
    text = (text or "").replace(DEFAULT_IMAGE_TOKEN, "").strip()[:MAX_QUESTION_CHARS]
    if not text:
        return state, chatbot_messages(state), ""
    digest = image_digest(image) if image is not None else None
    if state["conv"] is None or (digest is not None and digest != state["image_digest"]):
        # A new image starts a new conversation: the model sees one image, in the first turn.
        state = new_state()
        state["conv"] = get_conv_template(conv_mode or conv_mode_for(model or ""))
    conv = state["conv"]
    first_turn = len(conv.messages) <= conv.offset
    if first_turn and image is not None:
        state["image"], state["image_digest"] = image.convert("RGB"), digest
        conv.append_message(conv.roles[0], (text, state["image"], "Default"))
    else:
        conv.append_message(conv.roles[0], text)
    conv.append_message(conv.roles[1], None)
    return state, chatbot_messages(state), ""


def http_bot(state: dict, model: str | None, temperature: float, top_p: float, max_new_tokens: int,
             controller_url: str) -> Iterator[tuple[dict, list[dict]]]:  # fmt: skip
    """Stream the open answer of the conversation from the model's worker into the chatbot."""
    conv = state.get("conv")
    if conv is None or not conv.messages or conv.messages[-1][1] is not None:
        yield state, chatbot_messages(state)
        return

    def show(text: str):
        conv.messages[-1][-1] = text
        return state, chatbot_messages(state)

    if not model:
        yield show("error: no model is selected (is a model worker registered with the controller?)")
        return
    try:
        r = requests.post(controller_url + "/get_worker_address", json={"model": model}, timeout=10)
        r.raise_for_status()
        address = r.json()["address"]
    except (requests.RequestException, ValueError, KeyError) as e:
        logger.error(f"controller {controller_url} gave no worker address: {e}")
        yield show(SERVER_ERROR_MSG)
        return
    if not address:
        yield show(f"error: no worker serves model {model!r} any more; reload the page for the current list")
        return
    prompt = conv.get_prompt()
    images = [image_to_base64(state["image"])] if state.get("image") is not None and DEFAULT_IMAGE_TOKEN in prompt else []
    payload = {
        "model": model, "prompt": prompt, "temperature": float(temperature), "top_p": float(top_p),
        "max_new_tokens": min(int(max_new_tokens), MAX_OUTPUT_TOKENS), "stop": stop_for(conv), "images": images,
    }  # fmt: skip
    yield show(CURSOR)
    output = ""
    try:
        with requests.post(address + "/worker_generate_stream", json=payload, stream=True, timeout=(10, 600)) as r:
            for piece in r.iter_lines(decode_unicode=False, delimiter=b"\0"):
                if not piece:
                    continue
                data = json.loads(piece.decode())
                if data.get("error_code", 0) != 0:
                    yield show(f"{data.get('text', '')} (error_code: {data['error_code']})")
                    return
                output = data["text"][len(prompt):].strip()
                yield show(output + CURSOR)
    except (requests.RequestException, ValueError) as e:
        logger.error(f"worker {address} failed: {e}")
        yield show(SERVER_ERROR_MSG)
        return
    yield show(output)


def regenerate(state: dict):
    """Forget the last answer so that http_bot answers the last question again."""
    conv = state.get("conv")
    if conv is not None and len(conv.messages) > conv.offset and conv.messages[-1][0] == conv.roles[1]:
        conv.messages[-1][-1] = None
    return state, chatbot_messages(state)


def clear_history():
    state = new_state()
    return state, [], "", None


def build_demo(controller_url: str, models: list[str], model_list_mode: str = "once", conv_mode: str | None = None,
               concurrency_count: int = 16, embed: bool = False):  # fmt: skip
    """The gradio Blocks of the demo (queue set up; not launched)."""
    import gradio as gr

    with gr.Blocks(title="LLaVA") as demo:
        state = gr.State(new_state())
        if not embed:
            gr.Markdown(TITLE)
        with gr.Row():
            with gr.Column(scale=3):
                model_selector = gr.Dropdown(
                    choices=models, value=models[0] if models else None, interactive=True, label="Model",
                    elem_id="model_selector",
                )  # fmt: skip
                image = gr.Image(type="pil", label="Image", elem_id="image_input", sources=["upload", "clipboard"])
                with gr.Accordion("Parameters", open=False):
                    temperature = gr.Slider(0.0, 1.0, value=0.2, step=0.1, label="Temperature", interactive=True,
                                            elem_id="temperature")
                    top_p = gr.Slider(0.0, 1.0, value=0.7, step=0.1, label="Top P", interactive=True, elem_id="top_p")
                    max_tokens = gr.Slider(0, 1024, value=512, step=64, label="Max output tokens", interactive=True,
                                           elem_id="max_output_tokens")
            with gr.Column(scale=8):
                chatbot = gr.Chatbot(elem_id="chatbot", label="LLaVA Chatbot", height=420)
                with gr.Row():
                    textbox = gr.Textbox(show_label=False, placeholder="Enter text and press ENTER", container=False,
                                         elem_id="textbox", scale=8)  # fmt: skip
                    submit = gr.Button("Send", variant="primary", elem_id="send_btn", scale=1)
                with gr.Row():
                    regenerate_btn = gr.Button("Regenerate", elem_id="regenerate_btn")
                    clear_btn = gr.Button("Clear", elem_id="clear_btn")

        def add(state_, text, image_, model):
            return add_text(state_, text, image_, model, conv_mode)

        def bot(state_, model, temperature_, top_p_, max_tokens_):
            yield from http_bot(state_, model, temperature_, top_p_, max_tokens_, controller_url)

        bot_inputs = [state, model_selector, temperature, top_p, max_tokens]
        for event in (textbox.submit, submit.click):
            event(add, [state, textbox, image, model_selector], [state, chatbot, textbox], queue=False).then(
                bot, bot_inputs, [state, chatbot]
            )
        regenerate_btn.click(regenerate, [state], [state, chatbot], queue=False).then(bot, bot_inputs, [state, chatbot])
        clear_btn.click(clear_history, None, [state, chatbot, textbox, image], queue=False)

        if model_list_mode == "reload":
            def refresh():
                names = get_model_list(controller_url)
                return gr.Dropdown(choices=names, value=names[0] if names else None)

            demo.load(refresh, None, [model_selector], queue=False)
    demo.queue(default_concurrency_limit=concurrency_count, api_open=False)
    return demo


def theme():
    """Gradio's default look in the system's fonts."""
    import gradio as gr

    # Headless Chromium drew the bold title with missing glyphs in the theme's own fonts.
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="LLaVA web demo (gradio) in front of a controller.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None, help="default: gradio's (7860, or the next free one)")
    parser.add_argument("--controller-url", default="http://localhost:21001")
    parser.add_argument("--concurrency-count", type=int, default=16, help="answers streamed at the same time")
    parser.add_argument("--model-list-mode", choices=["once", "reload"], default="once",
                        help="ask the controller for the models once at start, or at every page load")  # fmt: skip
    parser.add_argument("--share", action="store_true", help="make a public gradio.live link (needs network)")
    parser.add_argument("--moderate", action="store_true", help="accepted for upstream's scripts; ignored "
                        "(upstream's moderation calls a hosted API)")  # fmt: skip
    parser.add_argument("--embed", action="store_true", help="leave out the title")
    parser.add_argument("--conv-mode", default=None, help="conversation template for every model (default: "
                        "guessed from the model name, as upstream)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.concurrency_count < 1:
        raise SystemExit("error: --concurrency-count must be >= 1")
    if args.conv_mode is not None:
        try:
            get_conv_template(args.conv_mode)
        except ValueError as e:
            raise SystemExit(f"error: --conv-mode: {e}") from None
    controller_url = args.controller_url.rstrip("/")
    models = get_model_list(controller_url)
    logger.info(f"models: {models}")
    demo = build_demo(controller_url, models, args.model_list_mode, args.conv_mode, args.concurrency_count,
                      args.embed)  # fmt: skip
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, theme=theme(), ssr_mode=False,
                footer_links=[], quiet=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
