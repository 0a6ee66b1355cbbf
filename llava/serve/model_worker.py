"""A model worker: loads one checkpoint, registers with the controller and streams answers over HTTP.

    python -m llava.serve.model_worker --controller-address http://localhost:10000 --port 40000 \
        --worker-address http://localhost:40000 --model-path checkpoints/llava-v1.5-7b [--load-4bit]

Upstream LLaVA's protocol (all POST, JSON):
  /worker_generate_stream  {"model", "prompt" (with one <image> per image), "images": [base64, ...],
                           "temperature", "top_p", "max_new_tokens", "stop"} -> chunks of
                           {"text": prompt + answer so far, "error_code": 0}, each followed by a NUL byte;
                           a request the worker cannot serve ends with a chunk whose error_code is 1
  /worker_get_status       -> {"model_names": [name], "speed": 1, "queue_length": n}
  /model_details           -> {"context_length": n}
  /count_token             {"prompt"} -> {"count": n, "error_code": 0}
The model loads as in llava.serve.cli (fp16 on CUDA, fp32 on a CPU; --load-8bit / --load-4bit need CUDA)
and answers through the project's one generation path (llava.generation.LlavaGenerator).
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import uuid
from collections.abc import Iterator

import requests
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.generation import LlavaGenerator
from llava.mm_utils import load_image_from_base64, tokenizer_image_token
from llava.serve.common import ERROR_WORKER, build_logger, heart_beat_interval, json_body, stream_chunk

logger = build_logger("model_worker")

# Upstream's ceiling on one answer, whatever a client asks for.
MAX_NEW_TOKENS_LIMIT = 1024
CONTEXT_EXCEEDED = "Exceeds max token length. Please start a new conversation, thanks."


class RequestError(ValueError):
    """A request the worker cannot serve as asked; the message goes back to the client."""


class ModelWorker:
    """One loaded model behind the worker's endpoints, with its registration and heartbeats."""

    def __init__(self, generator: LlavaGenerator, model_name: str, worker_address: str, controller_address: str,
                 limit_model_concurrency: int = 5, stream_interval: int = 1,
                 heart_beat_interval_s: float | None = None):  # fmt: skip
        if limit_model_concurrency < 1:
            raise ValueError(f"--limit-model-concurrency must be >= 1, got {limit_model_concurrency}")
        if stream_interval < 1:
            raise ValueError(f"--stream-interval must be >= 1, got {stream_interval}")
        self.generator = generator
        self.model_name = model_name
        self.worker_address = worker_address.rstrip("/")
        self.controller_address = controller_address.rstrip("/")
        self.limit = limit_model_concurrency
        self.stream_interval = stream_interval
        self.interval = heart_beat_interval() if heart_beat_interval_s is None else heart_beat_interval_s
        self.worker_id = uuid.uuid4().hex[:6]
        self.semaphore = threading.Semaphore(limit_model_concurrency)
        self._pending = 0  # requests running or waiting for the semaphore
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        config = generator.model.config
        self.context_length = int(getattr(config, "max_sequence_length", None)
                                  or getattr(config, "max_position_embeddings", 2048))  # fmt: skip

    # --- controller side -------------------------------------------------------------------------------------
    def status(self) -> dict:
        return {"model_names": [self.model_name], "speed": 1, "queue_length": self.queue_length()}

    def queue_length(self) -> int:
        with self._pending_lock:
            return self._pending

    def register(self) -> bool:
        """Register with the controller; False (logged) if it cannot be reached or refuses."""
        data = {"worker_name": self.worker_address, "check_heart_beat": True, "worker_status": self.status()}
        try:
            r = requests.post(self.controller_address + "/register_worker", json=data, timeout=5)
            r.raise_for_status()
        except requests.RequestException as e:
            logger.error(f"cannot register with the controller {self.controller_address}: {e}")
            return False
        logger.info(f"registered {self.model_name} at {self.worker_address} with {self.controller_address}")
        return True

    def send_heart_beat(self) -> None:
        """Tell the controller this worker is alive; register again if the controller forgot it."""
        data = {"worker_name": self.worker_address, "queue_length": self.queue_length()}
        try:
            r = requests.post(self.controller_address + "/receive_heart_beat", json=data, timeout=5)
            r.raise_for_status()
            exist = bool(r.json().get("exist"))
        except (requests.RequestException, ValueError) as e:
            logger.warning(f"heartbeat to {self.controller_address} failed: {e}")
            return
        if not exist:
            self.register()

    def start_heart_beat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.interval):
                self.send_heart_beat()

        threading.Thread(target=beat, daemon=True, name="heart-beat").start()

    def close(self) -> None:
        self._stop.set()

    # --- generation ------------------------------------------------------------------------------------------
    def count_tokens(self, prompt: str) -> int:
        return len(tokenizer_image_token(prompt, self.generator.tokenizer))

    def _settings(self, params: dict) -> tuple[str, list, LlavaGenerator]:
        prompt = params.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError(f"the request's 'prompt' must be a string, got {type(prompt).__name__}")
        images = params.get("images") or []
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise RequestError("the request's 'images' must be a list of base64 strings")
        markers = prompt.count(DEFAULT_IMAGE_TOKEN)
        if markers != len(images):
            raise RequestError(
                f"the prompt has {markers} {DEFAULT_IMAGE_TOKEN} markers but the request carries {len(images)} "
                "images: give one image per marker"
            )  # fmt: skip
        if images and not self.generator.accepts_images:
            raise RequestError(f"model {self.model_name} has no vision tower: it cannot answer about images")
        decoded = []
        for index, data in enumerate(images, start=1):
            try:
                decoded.append(load_image_from_base64(data))
            except (ValueError, OSError) as e:
                reason = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))  # a buffer, not a file
                raise RequestError(f"image {index} of {len(images)} is not a readable image: {reason}") from e
        try:
            temperature = float(params.get("temperature", 1.0))
            top_p = float(params.get("top_p", 1.0))
            max_new_tokens = min(int(params.get("max_new_tokens", 256)), MAX_NEW_TOKENS_LIMIT)
        except (TypeError, ValueError) as e:
            raise RequestError(f"temperature, top_p and max_new_tokens must be numbers: {e}") from e
        stop = params.get("stop") or ""
        if not isinstance(stop, str):
            raise RequestError(f"the request's 'stop' must be a string, got {stop!r}")
        if images:
            # The model's own image text (<im_start><image><im_end> for models trained with it), as upstream.
            prompt = prompt.replace(DEFAULT_IMAGE_TOKEN, self.generator.image_token_text())
        used = self.count_tokens(prompt) + len(decoded) * self._image_token_count()
        max_new_tokens = min(max_new_tokens, self.context_length - used)
        if max_new_tokens < 1:
            return prompt, decoded, None
        try:
            generator = self.generator.with_settings(
                temperature=temperature if temperature > 1e-3 else 0.0, top_p=top_p,
                max_new_tokens=max_new_tokens, stop=stop,
            )  # fmt: skip
        except ValueError as e:
            raise RequestError(str(e)) from e
        return prompt, decoded, generator

    def _image_token_count(self) -> int:
        tower = self.generator.model.get_vision_tower() if self.generator.accepts_images else None
        return int(getattr(tower, "num_patches", 0) or 0)

    def generate_stream(self, params: dict) -> Iterator[bytes]:
        """The chunks of one /worker_generate_stream answer (an error ends the stream with error_code 1)."""
        original_prompt = params.get("prompt") if isinstance(params.get("prompt"), str) else ""
        try:
            prompt, images, generator = self._settings(params)
            if generator is None:
                yield stream_chunk(original_prompt + CONTEXT_EXCEEDED, 0)
                return
            for answer in generator.stream_from_prompt(prompt, images, interval=self.stream_interval):
                yield stream_chunk(original_prompt + answer, 0)
        except RequestError as e:
            logger.info(f"refused a request: {e}")
            yield stream_chunk(f"error: {e}", ERROR_WORKER)
        except Exception as e:  # the client gets a chunk it can show, the log gets the details
            logger.exception("generation failed")
            yield stream_chunk(f"error: generation failed ({type(e).__name__}: {e})", ERROR_WORKER)

    def gated_stream(self, params: dict) -> Iterator[bytes]:
        """`generate_stream` under the concurrency limit, counted in the queue length while pending."""
        with self._pending_lock:
            self._pending += 1
        try:
            with self.semaphore:
                yield from self.generate_stream(params)
        finally:
            with self._pending_lock:
                self._pending -= 1


def build_app(worker: ModelWorker) -> FastAPI:
    """The worker's HTTP endpoints."""
    app = FastAPI(title=f"LLaVA model worker ({worker.model_name})")

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request):
        params = await json_body(request)
        return StreamingResponse(worker.gated_stream(params))

    @app.post("/worker_get_status")
    def worker_get_status():
        return worker.status()

    @app.post("/model_details")
    def model_details():
        return {"context_length": worker.context_length}

    @app.post("/count_token")
    async def count_token(request: Request):
        params = await json_body(request)
        prompt = params.get("prompt")
        if not isinstance(prompt, str):
            raise HTTPException(status_code=400, detail="the request's 'prompt' must be a string")
        return {"count": worker.count_tokens(prompt), "error_code": 0}

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="LLaVA model worker: serves one checkpoint to the controller.")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=21002)
    parser.add_argument("--worker-address", default=None, help="URL the controller reaches this worker at "
                        "(default: http://<host>:<port>)")  # fmt: skip
    parser.add_argument("--controller-address", default="http://localhost:21001")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None)
    parser.add_argument("--model-name", default=None, help="name the controller lists (default: from the path, "
                        "as upstream); loading always goes by the path, as in llava.serve.cli")  # fmt: skip
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available, else cpu)")
    parser.add_argument("--multi-modal", action="store_true", help="accepted for upstream's scripts; "
                        "whether a model takes images is read from the checkpoint")  # fmt: skip
    parser.add_argument("--limit-model-concurrency", type=int, default=5)
    parser.add_argument("--stream-interval", type=int, default=1, help="tokens between streamed chunks")
    parser.add_argument("--no-register", action="store_true", help="do not register with the controller")
    quantise = parser.add_mutually_exclusive_group()
    quantise.add_argument("--load-8bit", action="store_true", help="8-bit language model (bitsandbytes, CUDA only)")
    quantise.add_argument("--load-4bit", action="store_true", help="4-bit NF4 language model (bitsandbytes, CUDA only)")
    parser.add_argument(
        "--heart-beat-interval", type=float, default=None,
        help="seconds between heartbeats (default: $LLAVA_WORKER_HEART_BEAT_INTERVAL or 15)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.heart_beat_interval is not None and args.heart_beat_interval <= 0:
        raise SystemExit("error: --heart-beat-interval must be > 0 seconds")
    worker_address = args.worker_address or f"http://{args.host}:{args.port}"
    try:
        generator = LlavaGenerator.from_pretrained(
            args.model_path.rstrip("/"), args.model_base, conv_mode=None, device=args.device,
            load_8bit=args.load_8bit, load_4bit=args.load_4bit,
        )  # fmt: skip
        worker = ModelWorker(
            generator, args.model_name or generator.model_name, worker_address, args.controller_address,
            args.limit_model_concurrency, args.stream_interval, args.heart_beat_interval,
        )  # fmt: skip
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    device = generator.model.device
    logger.info(f"serving {worker.model_name} on {device} ({generator.model.dtype}) at {worker_address}")
    if not args.no_register:
        worker.register()  # an unreachable controller is retried by the heartbeats
        worker.start_heart_beat()
    uvicorn.run(build_app(worker), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
