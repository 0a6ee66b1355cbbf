"""Which rank and node a distributed training lost, when a collective fails or times out.

Every rank posts its node (Slurm's `SLURMD_NODENAME`, else the host name) to the rendezvous store that
torchrun serves on MASTER_ADDR:MASTER_PORT, and bumps a heartbeat counter there every BEAT_SECONDS from a
daemon thread. When a collective fails (a peer's connection closed because its process or node died, or
nothing arrived within the distributed timeout because it hangs), the rank that sees it reads the counters
twice, a few beats apart: a peer whose counter stood still is the one that went missing, and the error
names it. Counters rather than clock times, so that nodes need not agree on the time.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import timedelta

import torch

BEAT_SECONDS = 2.0
SILENT_BEATS = 3  # a peer is silent when its counter did not move for this many beats
_FAILURE_WORDS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout",
                  "broken pipe", "socket", "peer")  # fmt: skip


def this_node() -> str:
    """The node this process runs on: Slurm's node name (several may share a host), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def is_distributed_failure(error: BaseException) -> bool:
    """True for errors of torch.distributed's collectives (a lost peer, a timeout), not for user errors."""
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(error, dist_error):
        return True
    if not isinstance(error, RuntimeError):
        return False
    text = str(error).lower()
    return any(word in text for word in _FAILURE_WORDS)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


class DistWatch:
    """The heartbeat of one rank and, on a failure, the message that names who went silent."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, beat_seconds: float = BEAT_SECONDS):
        self.host, self.port, self.rank, self.world_size = host, port, rank, world_size
        self.beat_seconds = beat_seconds
        self.node = this_node()
        run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
        self.prefix = f"visatb_watch/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self._stop = threading.Event()
        self._store = self._connect(timeout=30)
        me = {"node": self.node, "host": socket.gethostname(), "pid": os.getpid()}
        self._store.set(f"{self.prefix}/rank/{rank}", json.dumps(me))
        self._store.add(f"{self.prefix}/beat/{rank}", 1)
        self._thread = threading.Thread(target=self._beat, name="visatb-heartbeat", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls) -> DistWatch | None:
        """A watch for this rank when torch.distributed runs with more than one rank under torchrun."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
            return None
        try:
            return cls(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), dist.get_rank(),
                       dist.get_world_size())  # fmt: skip
        except (RuntimeError, ValueError, OSError):
            return None  # no store to reach: train without the watch rather than not at all

    def _connect(self, timeout: float):
        return torch.distributed.TCPStore(self.host, self.port, is_master=False, timeout=timedelta(seconds=timeout),
                                          wait_for_workers=False)  # fmt: skip

    def _beat(self) -> None:
        key = f"{self.prefix}/beat/{self.rank}"
        while not self._stop.wait(self.beat_seconds):
            try:
                self._store.add(key, 1)
            except Exception:  # the store's node is gone or shutting down: nothing left to tell
                return

    def stop(self) -> None:
        self._stop.set()

    def _counters(self, store) -> dict[int, int]:
        return {r: store.add(f"{self.prefix}/beat/{r}", 0) for r in range(self.world_size)}

    def _peer(self, store, rank: int) -> str:
        try:
            if store.check([f"{self.prefix}/rank/{rank}"]):
                info = json.loads(store.get(f"{self.prefix}/rank/{rank}"))
                return f"rank {rank} on node {info['node']} (host {info['host']}, pid {info['pid']})"
        except Exception:
            pass
        return f"rank {rank} (it never reported its node)"

    def lost_contact_message(self, error: BaseException) -> str | None:
        """One line naming this rank and node, the silent rank(s) and node(s), and the failed collective; None
        when every rank still answers (the error is then no lost peer: the caller lets it propagate)."""
        me = f"rank {self.rank} on node {self.node}"
        job = f" (Slurm job {os.environ['SLURM_JOB_ID']})" if os.environ.get("SLURM_JOB_ID") else ""
        cause = _first_line(error)
        try:
            store = self._connect(timeout=10)
            before = self._counters(store)
            time.sleep(self.beat_seconds * SILENT_BEATS)
            after = self._counters(store)
        except Exception:
            return (f"[train] error{job}: {me} lost contact with the rendezvous store on {self.host}:{self.port}, "
                    f"the node of rank 0: that node died, hangs or is unreachable; the collective failed with "
                    f"{cause}")  # fmt: skip
        silent = [r for r in range(self.world_size) if r != self.rank and after[r] == before[r]]
        if not silent:
            return None
        peers = ", ".join(self._peer(store, r) for r in silent)
        return (f"[train] error{job}: {me} lost contact with {peers}: no heartbeat for "
                f"{self.beat_seconds * SILENT_BEATS:.0f} s (the process or its node died or hangs); the collective "
                f"failed with {cause}")  # fmt: skip

    def layout(self, timeout: float = 60.0) -> str:
        """Where every rank runs, once all have reported: `2 rank(s) on 2 node(s): n1 (rank 0), n2 (rank 1)`."""
        store = self._connect(timeout=timeout)
        keys = [f"{self.prefix}/rank/{r}" for r in range(self.world_size)]
        store.wait(keys, timedelta(seconds=timeout))
        nodes: dict[str, list[int]] = {}
        for rank, key in enumerate(keys):
            nodes.setdefault(json.loads(store.get(key))["node"], []).append(rank)
        where = ", ".join(f"{node} (rank{'s' if len(r) > 1 else ''} {', '.join(map(str, r))})"
                          for node, r in nodes.items())  # fmt: skip
        return f"{self.world_size} rank(s) on {len(nodes)} node(s): {where}"
