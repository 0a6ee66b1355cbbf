"""Submit and log out: the chain's driver as a small Slurm job, and the status of every item of a work directory.

    python -m llava.visatb.chain.driver submit [--driver-args "--time=7-0"] CHAIN_ARGS...   # prints the job id
    python -m llava.visatb.chain.driver status --work-dir WORK_DIR

`submit` writes WORK_DIR/slurm/driver.sh (`python -m llava.visatb.chain CHAIN_ARGS --executor slurm` from this
repository, with this environment) and submits it as one job of one CPU; the driver then submits each item as
its own job, exactly as a chain started by hand, so nothing needs the user's shell. Its job id goes to
WORK_DIR/slurm/driver.json and its output to WORK_DIR/slurm/driver.out. A second submit while the first driver
is queued or running is refused with its job id; after a failed item or a cancelled driver, submitting again
continues where the chain stopped (finished items are skipped, items whose jobs are still in Slurm waited on).

`status` reads the work directory and asks squeue: the driver's job, then every item the chain has submitted or
finished, with its Slurm job id and state (done, PENDING, RUNNING, failed with its exit code, ended CANCELLED
...), and the stages not reached yet.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from llava.utils import atomic_write_json, load_json
from llava.visatb.chain.config import REPO_ROOT, STAGES
from llava.visatb.chain.slurm import SlurmError, is_live, job_states


def _work_dir(chain_args: Sequence[str]) -> Path:
    for i, arg in enumerate(chain_args):
        if arg == "--work-dir" and i + 1 < len(chain_args):
            return Path(chain_args[i + 1]).resolve()
        if arg.startswith("--work-dir="):
            return Path(arg.split("=", 1)[1]).resolve()
    raise ValueError("the chain's arguments have no --work-dir")


def _driver_args(chain_args: Sequence[str]) -> list[str]:
    """The chain's arguments with the work directory made absolute and the Slurm executor chosen."""
    out, skip = [], False
    for i, arg in enumerate(chain_args):
        if skip:
            skip = False
            continue
        if arg == "--executor":
            skip = True
            continue
        if arg.startswith("--executor="):
            continue
        if arg == "--work-dir":
            out += [arg, str(Path(chain_args[i + 1]).resolve())]
            skip = True
            continue
        out.append(arg)
    return [*out, "--executor", "slurm"]


def submit(chain_args: Sequence[str], driver_args: Sequence[str] = ()) -> str:
    """Submit the chain's driver as a Slurm job; its job id."""
    work = _work_dir(chain_args)
    folder = work / "slurm"
    record = folder / "driver.json"
    if record.is_file():
        earlier = load_json(record)
        state = job_states([str(earlier["job_id"])]).get(str(earlier["job_id"]))
        if state is not None and is_live(state[0]):
            raise ValueError(f"the chain's driver for {work} is already Slurm job {earlier['job_id']} ({state[0]}): "
                             f"wait for it, or `scancel {earlier['job_id']}` first")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "driver.sh"
    command = [sys.executable, "-m", "llava.visatb.chain", *_driver_args(chain_args)]
    script.write_text(
        "#!/usr/bin/env bash\n"
        f"# The VisATB chain's driver for {work}: it submits every item as its own job and waits on them.\n"
        f"cd {shlex.quote(str(REPO_ROOT))} || exit 1\n"
        f"exec {shlex.join(command)}\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    sbatch = ["sbatch", "--parsable", "--export=ALL", "--nodes=1", "--ntasks=1", "--cpus-per-task=1",
              f"--job-name=visatb-driver-{work.name}", f"--output={folder / 'driver.out'}", "--open-mode=append",
              *driver_args, str(script)]  # fmt: skip
    result = subprocess.run(sbatch, capture_output=True, text=True, check=False)
    job_id = result.stdout.strip().split(";")[0]
    if result.returncode != 0 or not job_id.isdigit():
        raise SlurmError(f"`{shlex.join(sbatch)}` failed (exit code {result.returncode}): "
                         f"{result.stderr.strip() or result.stdout.strip()}")  # fmt: skip
    atomic_write_json(record, {"job_id": job_id, "command": command, "sbatch": sbatch,
                               "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # fmt: skip
    return job_id


def _status_file(path: Path) -> tuple[str, int] | None:
    fields = path.read_text(encoding="utf-8").split() if path.is_file() else []
    if len(fields) == 4 and fields[1].lstrip("-").isdigit():
        return fields[0], int(fields[1])
    return None


def status_rows(work: Path) -> tuple[list[tuple[str, str, str, str]], str]:
    """(stage, item, job id, state) for every item the chain has submitted or finished, and the driver's line."""
    done_dir, slurm_dir = work / ".done", work / "slurm"
    rows: list[tuple[str, str, str, str]] = []
    for stage in STAGES:
        items: dict[str, tuple[str, str]] = {}
        for marker in sorted((done_dir / stage).glob("*.json")):
            try:
                job = str(load_json(marker).get("slurm_job") or "-")
            except ValueError:
                job = "-"
            items[marker.stem] = (job, "done")
        for submitted in sorted((slurm_dir / stage).glob("*.job.json")):
            name = submitted.name[: -len(".job.json")]
            if name in items:
                continue
            try:
                job = str(load_json(submitted)["job_id"])
            except (ValueError, KeyError):
                continue
            ended = _status_file(slurm_dir / stage / f"{name}.status")
            if ended is not None and ended[0] == job:
                items[name] = (job, "finished, not yet taken" if ended[1] == 0 else f"failed (exit code {ended[1]})")
            else:
                items[name] = (job, "?")  # queued, running, or ended without a status: squeue tells
        if not items:
            marker = done_dir / f"{stage}.json"
            rows.append((stage, "-", "-", "done" if marker.is_file() else "not started"))
            continue
        rows += [(stage, name, job, state) for name, (job, state) in sorted(items.items())]
    driver_line = "driver: none submitted (python -m llava.visatb.chain.driver submit ...)"
    record = slurm_dir / "driver.json"
    driver_job = str(load_json(record)["job_id"]) if record.is_file() else None
    asked = [job for _, _, job, state in rows if state == "?"] + ([driver_job] if driver_job else [])
    try:
        states = job_states(asked)
    except SlurmError as e:
        unknown = f"unknown (squeue failed: {e})"
        rows = [(stage, name, job, unknown if state == "?" else state) for stage, name, job, state in rows]
        return rows, f"driver: Slurm job {driver_job}, {unknown}" if driver_job else driver_line
    for index, (stage, name, job, state) in enumerate(rows):
        if state == "?":
            listed = states.get(job)
            rows[index] = (stage, name, job, listed[0] if listed else "ended without an exit status (cancelled?)")
    if driver_job:
        state = states.get(driver_job)
        driver_line = (f"driver: Slurm job {driver_job} {state[0] if state else 'no longer in squeue'}; "
                       f"output {slurm_dir / 'driver.out'}")  # fmt: skip
    return rows, driver_line


def print_status(work: Path, out=sys.stdout) -> None:
    rows, driver_line = status_rows(work)
    print(f"{work}\n{driver_line}", file=out)
    widths = [max(len(r[k]) for r in [("stage", "item", "job", "state"), *rows]) for k in range(3)]
    for row in [("stage", "item", "job", "state"), *rows]:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3], file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava.visatb.chain.driver", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    submit_parser = sub.add_parser("submit", help="submit the chain's driver as a Slurm job")
    submit_parser.add_argument("--driver-args", default="", help="more sbatch flags for the driver's job")
    status_parser = sub.add_parser("status", help="every item of a work directory, its job id and state")
    status_parser.add_argument("--work-dir", required=True)
    args, rest = parser.parse_known_args(argv)
    try:
        if args.action == "status":
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            work = Path(args.work_dir).resolve()
            if not work.is_dir():
                raise ValueError(f"--work-dir {work}: no such folder (the chain has not run there)")
            print_status(work)
            return 0
        job = submit(rest, shlex.split(args.driver_args))
    except (ValueError, SlurmError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    work = _work_dir(rest)
    print(f"submitted the chain's driver: Slurm job {job}; output {work / 'slurm' / 'driver.out'}")
    print(f"follow it with: python -m llava.visatb.chain.driver status --work-dir {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
