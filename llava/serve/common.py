"""What the controller, the model workers and the web UI share: timings, error text, image encoding, logging."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import sys

from PIL import Image

# Upstream LLaVA's timings. Environment variables (or the controller's / worker's flags) shorten them for tests.
CONTROLLER_HEART_BEAT_EXPIRATION = 30.0
WORKER_HEART_BEAT_INTERVAL = 15.0

# The text upstream's workers and controller send with a non-zero error_code when a request cannot be served.
SERVER_ERROR_MSG = "**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"

# error_code values of the streamed chunks: 0 fine; 1 the worker failed the request (bad input, generation
# error); 2 the controller knows no worker for the model; 3 the controller could not reach the worker.
ERROR_WORKER = 1
ERROR_NO_WORKER = 2
ERROR_WORKER_UNREACHABLE = 3


def seconds_from_env(name: str, default: float) -> float:
    """A positive number of seconds from environment variable `name`, else `default`."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"error: environment variable {name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise SystemExit(f"error: environment variable {name}={raw!r} must be > 0 seconds")
    return value


def heart_beat_expiration() -> float:
    """Seconds after its last heartbeat that the controller drops a worker (LLAVA_CONTROLLER_HEART_BEAT_EXPIRATION)."""
    return seconds_from_env("LLAVA_CONTROLLER_HEART_BEAT_EXPIRATION", CONTROLLER_HEART_BEAT_EXPIRATION)


def heart_beat_interval() -> float:
    """Seconds between a worker's heartbeats (LLAVA_WORKER_HEART_BEAT_INTERVAL)."""
    return seconds_from_env("LLAVA_WORKER_HEART_BEAT_INTERVAL", WORKER_HEART_BEAT_INTERVAL)


def image_to_base64(image: Image.Image, image_format: str = "PNG") -> str:
    """An image as the base64 string a worker's `images` list carries."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def build_logger(name: str) -> logging.Logger:
    """A logger writing timestamped lines to stderr (no log files: the launcher decides where output goes)."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def stream_chunk(text: str, error_code: int) -> bytes:
    """One chunk of upstream's /worker_generate_stream: JSON, then a NUL byte."""
    return json.dumps({"text": text, "error_code": error_code}).encode() + b"\0"


async def json_body(request) -> dict:
    """The request's JSON object; a 400 error naming what is wrong otherwise (the controller's and workers')."""
    from fastapi import HTTPException

    try:
        data = await request.json()
    except ValueError:
        raise HTTPException(status_code=400, detail="the request body is not JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(status_code=400, detail="the request body must be a JSON object")
    return data
