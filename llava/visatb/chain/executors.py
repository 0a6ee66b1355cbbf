"""The chain's local executor: each pending item of a stage runs here as a subprocess, up to `jobs` at a time.

An item's output goes to its log (WORK_DIR/logs/<stage>/<item>.log, first line the command); it is marked done
only after it exited 0 and wrote its outputs. llava/visatb/chain/slurm.py runs the same items as Slurm jobs
and finishes them through `_finish_item` here, so both executors mark and record alike.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Any

from llava.utils import atomic_write_json
from llava.visatb.chain.config import REPO_ROOT, PipelineError
from llava.visatb.chain.costs import item_devices
from llava.visatb.chain.records import new_run_id
from llava.visatb.chain.stages import Item
from llava.visatb.chain.workdir import WorkDir

LOG_TAIL_LINES = 15


class LocalExecutor(WorkDir):
    """Runs items as subprocesses and marks each finished one done; says what it does on `out`."""

    out: IO[str]
    ran_items: int

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _run_items_local(self, stage: str, prefix: str, pending: list[Item], jobs: int) -> None:
        """Run `pending` (largest first, as given), `jobs` at a time; the first failure stops new starts."""
        total = len(pending)
        failures: list[PipelineError] = []
        finished = 0
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, total))) as pool:
            running: dict[Future, Item] = {}
            queue = list(pending)
            while queue or running:
                while queue and len(running) < jobs and not failures:
                    item = queue.pop(0)
                    self.say(f"  [{finished + len(running) + 1}/{total}] {item.label}")
                    running[pool.submit(self._run_item, stage, item, jobs)] = item
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    item = running.pop(future)
                    finished += 1
                    try:
                        seconds, extras = future.result()
                    except PipelineError as e:
                        failures.append(e)
                        continue
                    note = f" ({extras['summary']})" if extras.get("summary") else ""
                    self.say(f"    done {finished}/{total}: {item.key} in {seconds:.1f} s{note}")
        if failures:
            raise PipelineError(f"{prefix} failed: {failures[0]}")

    def _item_env(self, item: Item) -> dict[str, str]:
        """What an item's process gets on top of the chain's environment: its own variables and PYTHONPATH."""
        env = dict(item.env)
        inherited = item.env.get("PYTHONPATH", os.environ.get("PYTHONPATH"))
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + inherited if inherited else "")
        return env

    def _run_item(self, stage: str, item: Item, jobs: int) -> tuple[float, dict[str, Any]]:
        log = self.item_log(stage, item)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self._item_env(item)}
        if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            # Parallel CPU processes share the cores instead of each starting one thread per core.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
        start = time.monotonic()
        with open(log, "w", encoding="utf-8") as handle:
            handle.write("$ " + " ".join(shlex.quote(c) for c in item.command) + "\n")
            handle.flush()
            result = subprocess.run(item.command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                    check=False)  # fmt: skip
        seconds = time.monotonic() - start
        return seconds, self._finish_item(stage, item, log, result.returncode, seconds)

    def _finish_item(self, stage: str, item: Item, log: Path, returncode: int, seconds: float,
                     job: str = "", record: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """Check an item's exit code and outputs, read its log, mark it done; `job` names a Slurm job."""
        if returncode != 0:
            tail = log_tail(log) if log.is_file() else "    (no log written)"
            raise PipelineError(f"{item.key}: {job}exit code {returncode}; log {log}\n{tail}")
        missing = [str(p) for p in item.outputs if not p.exists()]
        if missing:
            raise PipelineError(f"{item.key}: {job}finished but did not write {', '.join(missing)}; log {log}")
        text = log.read_text(encoding="utf-8")
        extras = item.collect(text) if item.collect else {}
        extras.update(item_devices(stage, text))
        self.ran_items += 1
        recipe = {"recipe": item.recipe.to_json(), "made": new_run_id()} if item.recipe is not None else {}
        atomic_write_json(self.marker(stage, item.key), {
            "item": item.key, "command": item.command, "env": item.env, "seconds": round(seconds, 1),
            "log": str(log), **(record or {}), **extras, **recipe,
        })  # fmt: skip
        self.started_marker(stage, item.key).unlink(missing_ok=True)
        return extras



def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log, indented, for an error message."""
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join("    | " + line for line in text)
