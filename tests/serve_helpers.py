"""Start real controller / model worker / web server processes on 127.0.0.1 for the serving tests.

The stack is started once per test session (both test_serve_protocol.py and test_serve_web.py use it) and
stopped at exit. Heartbeats are shortened by environment variables so that a dead worker expires in seconds.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from train_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
HEART_BEAT_EXPIRATION = 2.0  # seconds; upstream's 30
HEART_BEAT_INTERVAL = 0.5  # seconds; upstream's 15
# Served names with "llava-v1" in them, so that the web demo picks the llava_v1 template as upstream would.
MODEL_A = "llava-v1.5-tiny-ew"
MODEL_B = "llava-v1.5-tiny-visatb"


def serve_env() -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        LLAVA_CONTROLLER_HEART_BEAT_EXPIRATION=str(HEART_BEAT_EXPIRATION),
        LLAVA_WORKER_HEART_BEAT_INTERVAL=str(HEART_BEAT_INTERVAL), GRADIO_ANALYTICS_ENABLED="False",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )  # fmt: skip
    return env


@dataclass
class Stack:
    root: Path
    controller_url: str = ""
    workers: dict[str, str] = field(default_factory=dict)  # served name -> worker URL
    checkpoints: dict[str, str] = field(default_factory=dict)  # served name -> checkpoint folder
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, key: str, module: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{key}.log", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=self.root, env=serve_env(), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.processes[key] = proc
        return proc

    def log(self, key: str) -> str:
        return (self.root / f"{key}.log").read_text(errors="replace")[-4000:]

    def start_worker(self, name: str, checkpoint: str) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self.start(name, "llava.serve.model_worker", "--host", "127.0.0.1", "--port", str(port),
                   "--worker-address", url, "--controller-address", self.controller_url,
                   "--model-path", checkpoint, "--model-name", name, "--device", "cpu")  # fmt: skip
        self.workers[name] = url
        self.checkpoints[name] = checkpoint
        return url

    def wait_for_models(self, names: set[str], timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for key, proc in self.processes.items():
                if proc.poll() is not None and key in names | {"controller"}:
                    raise RuntimeError(f"{key} exited with {proc.returncode}:\n{self.log(key)}")
            try:
                listed = set(requests.post(self.controller_url + "/list_models", timeout=2).json()["models"])
                if names <= listed:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"models {sorted(names)} not registered in {timeout} s:\n"
                           + "\n".join(self.log(k) for k in self.processes))  # fmt: skip

    def stop(self, key: str) -> None:
        proc = self.processes.get(key)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def stop_all(self) -> None:
        for key in list(self.processes):
            self.stop(key)


_STACK: Stack | None = None


def tiny_checkpoints(root: Path) -> dict[str, str]:
    """Two different tiny LLaVA checkpoints (different seeds), served as MODEL_A and MODEL_B."""
    from llava.model.tiny import TinyConfig, build_tiny_llava

    return {
        MODEL_A: build_tiny_llava(root / "a", kind="full", cfg=TinyConfig(seed=0))["full"],
        MODEL_B: build_tiny_llava(root / "b", kind="full", cfg=TinyConfig(seed=1))["full"],
    }


def stack(root: Path) -> Stack:
    """The session's controller with a worker for MODEL_A and one for MODEL_B (started on first use)."""
    global _STACK
    if _STACK is None:
        root.mkdir(parents=True, exist_ok=True)
        new = Stack(root)
        atexit.register(new.stop_all)
        port = free_port()
        new.controller_url = f"http://127.0.0.1:{port}"
        new.start("controller", "llava.serve.controller", "--host", "127.0.0.1", "--port", str(port))
        for name, checkpoint in tiny_checkpoints(root).items():
            new.start_worker(name, checkpoint)
        new.wait_for_models({MODEL_A, MODEL_B})
        _STACK = new
    return _STACK
