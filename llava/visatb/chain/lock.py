"""One chain per work directory at a time: a lock file naming the holder's process and host.

Two chains on one WORK_DIR would train and answer into the same folders. The lock is a file created
exclusively (atomic on local and network file systems alike); it names pid, host, start time and command. A
later chain takes it over only when that process is gone: on the same host when the pid no longer runs (or now
belongs to another process: its start time differs); a holder on another host cannot be checked from here, so
the message says how to remove the lock once that run has ended.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"


class LockHeld(RuntimeError):
    """Another chain holds the work directory."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), to tell a reused pid from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    now = _process_start(pid)
    return start is None or now is None or now == start


class WorkDirLock:
    """`with WorkDirLock(work_dir, say):` holds the lock for the block; raises LockHeld when another chain has it."""

    def __init__(self, work_dir: Path, say=print):
        self.path = Path(work_dir) / LOCK_NAME
        self.say = say
        self.held = False

    def _holder(self) -> dict[str, Any]:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write(self) -> bool:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "process_start": _process_start(os.getpid()), "command": " ".join(sys.argv)[:500]}  # fmt: skip
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        return True

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._write():
                self.held = True
                return
            holder = self._holder()
            pid, host = holder.get("pid"), holder.get("host")
            if not holder:
                # Being written this instant, or left empty by a crash: look again, then take it over.
                time.sleep(0.2)
                if not self._holder():
                    self.path.unlink(missing_ok=True)
                continue
            if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid, holder.get("process_start")):
                self.say(f"[visatb] taking over {self.path}: its holder (pid {pid}, started {holder.get('started')}) "
                         "is no longer running")  # fmt: skip
                self.path.unlink(missing_ok=True)
                continue
            where = "this host" if host == socket.gethostname() else f"host {host}"
            remedy = (f"wait for it to finish or stop it (kill {pid})" if host == socket.gethostname() else
                      f"wait for it to finish; if that run has ended (e.g. its node went down), delete {self.path}")  # fmt: skip
            raise LockHeld(
                f"{self.path.parent} is in use by another chain: pid {pid} on {where}, running since "
                f"{holder.get('started')} ({holder.get('command', '?')}); {remedy}"
            )
        raise LockHeld(f"could not take {self.path}: it keeps being recreated by another process")

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> WorkDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
