"""The controller: keeps the list of model workers and sends each request to a worker serving its model.

    python -m llava.serve.controller --host 0.0.0.0 --port 10000 [--dispatch-method shortest_queue]

Upstream LLaVA's HTTP protocol (all POST, JSON bodies):
  /register_worker      {"worker_name": url, "check_heart_beat": bool, "worker_status": {...} or null}
  /receive_heart_beat   {"worker_name": url, "queue_length": n} -> {"exist": bool} (false: register again)
  /refresh_all_workers  asks every worker for its status again, dropping those that do not answer
  /list_models          -> {"models": [names]}
  /get_worker_address   {"model": name} -> {"address": url}, "" when no worker serves the model
  /worker_get_status    -> {"model_names": [...], "speed": n, "queue_length": n} over all workers
  /worker_generate_stream  a worker's request, passed to a worker of params["model"] and streamed back
A worker that registered with check_heart_beat and sends no heartbeat for --heart-beat-expiration seconds
(upstream: 30) is dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import threading
import time
from collections.abc import Iterator

import requests
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from llava.serve.common import (
    ERROR_NO_WORKER,
    ERROR_WORKER_UNREACHABLE,
    SERVER_ERROR_MSG,
    build_logger,
    heart_beat_expiration,
    json_body,
    stream_chunk,
)

logger = build_logger("controller")

DISPATCH_METHODS = ("lottery", "shortest_queue")


@dataclasses.dataclass
class WorkerInfo:
    model_names: list[str]
    speed: float
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float


class Controller:
    """The registry of workers, their heartbeats and the choice of a worker for a model."""

    def __init__(self, dispatch_method: str = "shortest_queue", expiration: float | None = None,
                 status_timeout: float = 5.0, stream_timeout: float = 300.0):  # fmt: skip
        if dispatch_method not in DISPATCH_METHODS:
            raise ValueError(f"dispatch method must be one of {', '.join(DISPATCH_METHODS)}, not {dispatch_method!r}")
        self.dispatch_method = dispatch_method
        self.expiration = heart_beat_expiration() if expiration is None else expiration
        self.status_timeout = status_timeout
        self.stream_timeout = stream_timeout
        self.workers: dict[str, WorkerInfo] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_forever, daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        self._stop.set()

    def _sweep_forever(self) -> None:
        # Checking a few times per expiration period drops a silent worker soon after it expires.
        while not self._stop.wait(self.expiration / 3):
            self.remove_stale_workers()

    def worker_status(self, worker_name: str) -> dict | None:
        """A worker's /worker_get_status answer, or None if it does not answer properly."""
        try:
            r = requests.post(worker_name + "/worker_get_status", timeout=self.status_timeout)
            r.raise_for_status()
            status = r.json()
            if not isinstance(status.get("model_names"), list):
                raise ValueError(f"no model_names list in {status!r}")
            return status
        except (requests.RequestException, ValueError) as e:
            logger.warning(f"worker {worker_name} gave no status: {e}")
            return None

    def register_worker(self, worker_name: str, check_heart_beat: bool, worker_status: dict | None) -> bool:
        if worker_status is None:
            worker_status = self.worker_status(worker_name)
            if worker_status is None:
                return False
        info = WorkerInfo(
            model_names=[str(m) for m in worker_status.get("model_names", [])],
            speed=float(worker_status.get("speed", 1)), queue_length=int(worker_status.get("queue_length", 0)),
            check_heart_beat=bool(check_heart_beat), last_heart_beat=time.time(),
        )  # fmt: skip
        with self.lock:
            known = worker_name in self.workers
            self.workers[worker_name] = info
        logger.info(f"{'re-' if known else ''}registered worker {worker_name} serving {info.model_names}")
        return True

    def remove_worker(self, worker_name: str) -> None:
        with self.lock:
            self.workers.pop(worker_name, None)

    def refresh_all_workers(self) -> None:
        with self.lock:
            names = list(self.workers)
        for name in names:
            status = self.worker_status(name)
            if status is None:
                logger.info(f"dropping worker {name}: it does not answer")
                self.remove_worker(name)
            else:
                with self.lock:
                    info = self.workers.get(name)
                    check = info.check_heart_beat if info else True
                self.register_worker(name, check, status)

    def list_models(self) -> list[str]:
        with self.lock:
            return sorted({m for info in self.workers.values() for m in info.model_names})

    def remove_stale_workers(self) -> None:
        deadline = time.time() - self.expiration
        with self.lock:
            stale = [n for n, w in self.workers.items() if w.check_heart_beat and w.last_heart_beat < deadline]
            for name in stale:
                del self.workers[name]
        for name in stale:
            logger.info(f"dropped worker {name}: no heartbeat for {self.expiration:g} s")

    def get_worker_address(self, model_name: str) -> str:
        """The URL of a worker serving `model_name` ("" if none), chosen by the dispatch method."""
        with self.lock:
            candidates = [(n, w) for n, w in self.workers.items() if model_name in w.model_names]
            if not candidates:
                return ""
            if self.dispatch_method == "lottery":
                weights = [max(w.speed, 0.0) for _, w in candidates]
                if sum(weights) <= 0:
                    weights = [1.0] * len(candidates)
                return random.choices([n for n, _ in candidates], weights=weights)[0]
            name, info = min(candidates, key=lambda item: item[1].queue_length / max(item[1].speed, 1e-9))
            info.queue_length += 1  # until the worker's next heartbeat reports its real queue
            return name

    def receive_heart_beat(self, worker_name: str, queue_length: int) -> bool:
        with self.lock:
            info = self.workers.get(worker_name)
            if info is None:
                return False
            info.queue_length = queue_length
            info.last_heart_beat = time.time()
            return True

    def generate_stream(self, params: dict) -> Iterator[bytes]:
        """Pass a generation request to a worker of params["model"], streaming its chunks back."""
        model = params.get("model")
        address = self.get_worker_address(str(model))
        if not address:
            served = ", ".join(self.list_models()) or "none"
            yield stream_chunk(f"no worker serves model {model!r} (models served: {served})", ERROR_NO_WORKER)
            return
        try:
            with requests.post(address + "/worker_generate_stream", json=params, stream=True,
                               timeout=(self.status_timeout, self.stream_timeout)) as r:  # fmt: skip
                for piece in r.iter_lines(decode_unicode=False, delimiter=b"\0"):
                    if piece:
                        yield piece + b"\0"
        except requests.RequestException as e:
            logger.warning(f"worker {address} failed: {e}")
            yield stream_chunk(SERVER_ERROR_MSG, ERROR_WORKER_UNREACHABLE)

    def status(self) -> dict:
        """The sum of every worker's status (upstream's /worker_get_status of the controller)."""
        with self.lock:
            names = list(self.workers)
        models: set[str] = set()
        speed, queue = 0.0, 0
        for name in names:
            status = self.worker_status(name)
            if status is None:
                self.remove_worker(name)
                continue
            models.update(status.get("model_names", []))
            speed += float(status.get("speed", 1))
            queue += int(status.get("queue_length", 0))
        return {"model_names": sorted(models), "speed": speed, "queue_length": queue}


def _required(data: dict, field: str, kind: type = str):
    if field not in data:
        raise HTTPException(status_code=400, detail=f"the request has no {field!r} field")
    value = data[field]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise HTTPException(status_code=400, detail=f"field {field!r} must be a {kind.__name__}, got {value!r}")
    return value


def build_app(controller: Controller) -> FastAPI:
    """The controller's HTTP endpoints."""
    app = FastAPI(title="LLaVA controller")

    @app.post("/register_worker")
    async def register_worker(request: Request):
        data = await json_body(request)
        name = _required(data, "worker_name")
        status = data.get("worker_status")
        if status is not None and not isinstance(status, dict):
            raise HTTPException(status_code=400, detail="field 'worker_status' must be an object or null")
        ok = controller.register_worker(name, bool(data.get("check_heart_beat", True)), status)
        if not ok:
            raise HTTPException(status_code=400, detail=f"worker {name} did not answer /worker_get_status")
        return {"registered": True}

    @app.post("/refresh_all_workers")
    def refresh_all_workers():
        controller.refresh_all_workers()
        return {"models": controller.list_models()}

    @app.post("/list_models")
    def list_models():
        return {"models": controller.list_models()}

    @app.post("/get_worker_address")
    async def get_worker_address(request: Request):
        data = await json_body(request)
        return {"address": controller.get_worker_address(_required(data, "model"))}

    @app.post("/receive_heart_beat")
    async def receive_heart_beat(request: Request):
        data = await json_body(request)
        name = _required(data, "worker_name")
        queue_length = data.get("queue_length", 0)
        if not isinstance(queue_length, int):
            raise HTTPException(status_code=400, detail=f"field 'queue_length' must be an int, got {queue_length!r}")
        return {"exist": controller.receive_heart_beat(name, queue_length)}

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request):
        params = await json_body(request)
        return StreamingResponse(controller.generate_stream(params))

    @app.post("/worker_get_status")
    def worker_get_status():
        return controller.status()

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="LLaVA controller: registers model workers and routes requests.")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=21001)
    parser.add_argument("--dispatch-method", choices=DISPATCH_METHODS, default="shortest_queue")
    parser.add_argument(
        "--heart-beat-expiration", type=float, default=None,
        help="seconds without a heartbeat after which a worker is dropped (default: "
        "$LLAVA_CONTROLLER_HEART_BEAT_EXPIRATION or 30)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.heart_beat_expiration is not None and args.heart_beat_expiration <= 0:
        raise SystemExit("error: --heart-beat-expiration must be > 0 seconds")
    controller = Controller(args.dispatch_method, args.heart_beat_expiration)
    logger.info(f"dispatch {controller.dispatch_method}, heartbeat expiration {controller.expiration:g} s")
    uvicorn.run(build_app(controller), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
