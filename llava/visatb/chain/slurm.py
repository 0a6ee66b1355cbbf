"""The chain's Slurm executor: each item becomes one `sbatch` job, and the chain waits on it through `squeue`.

Per item, in WORK_DIR/slurm/<stage>/: `<item>.sh` (the job script: the item's environment, its command, its log
in WORK_DIR/logs/ exactly as the local executor writes it, and at the end `<item>.status`: job id, exit code,
start and end time), `<item>.job.json` (the submitted job id, written as soon as sbatch answers) and `<item>.out`
(what Slurm itself prints, e.g. `CANCELLED AT ...`). A rerun finds `<item>.job.json` of an item not marked done
and waits on that job while Slurm still lists it, takes its result if it finished with exit code 0, and submits
it again otherwise. There is no accounting database requirement: only sbatch, squeue and sinfo are used.

The module holds the Slurm side (settings, job files, sbatch and squeue) and `SlurmExecutor`, the chain's
executor on top of it: one module, as each half is read with the other.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from llava.utils import atomic_write_json, load_json
from llava.visatb.chain.config import REPO_ROOT, STAGES, PipelineError
from llava.visatb.chain.executors import LocalExecutor, log_tail
from llava.visatb.chain.stages import Item
from llava.visatb.chain.workdir import safe_name

# A key of a per-stage value: one of these kinds (both stages of that kind) or a stage name.
STAGE_KINDS = {"train": ("train", "final-train"), "infer": ("infer", "final-infer"),
               "score": ("score", "final-score")}  # fmt: skip
SLURM_STAGES = STAGES
TRAIN_STAGES = STAGE_KINDS["train"]
# squeue states of a job that has ended (Slurm keeps it listed for MinJobAge seconds, then forgets it).
ENDED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}  # fmt: skip
# States in which the job script was stopped before it could write its status file.
KILLED_STATES = {"CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
POLL_SECONDS = 2.0
# A job that ended normally may show its status file a little later on a network file system.
STATUS_GRACE_SECONDS = 10.0
# How long squeue may fail in a row (controller restarting, network) before the chain gives up.
SQUEUE_PATIENCE_SECONDS = 300.0
TIME_PATTERN = re.compile(r"(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|"
                          r"UNLIMITED|INFINITE)")  # fmt: skip

T = TypeVar("T")


class SlurmError(RuntimeError):
    """sbatch or squeue failed, or a Slurm option is wrong; the message names the command or flag."""


# ---------------------------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Resources:
    """What one job asks Slurm for."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus: int = 1
    partition: str | None = None
    time: str | None = None
    args: tuple[str, ...] = ()

    def sbatch_flags(self) -> list[str]:
        flags = [f"--nodes={self.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={self.cpus}"]
        if self.gpus_per_node:
            flags.append(f"--gpus-per-node={self.gpus_per_node}")
        if self.partition:
            flags.append(f"--partition={self.partition}")
        if self.time:
            flags.append(f"--time={self.time}")
        return flags + list(self.args)

    def describe(self) -> str:
        parts = [f"{self.nodes} node(s)", f"{self.cpus} CPU(s)"]
        if self.gpus_per_node:
            parts.append(f"{self.gpus_per_node} GPU(s) per node")
        if self.partition:
            parts.append(f"partition {self.partition}")
        if self.time:
            parts.append(f"time {self.time}")
        if self.args:
            parts.append(shlex.join(self.args))
        return ", ".join(parts)


def parse_stage_values(text: str | None, flag: str, check: Callable[[str], T]) -> dict[str, T]:
    """`VALUE`, `KEY=VALUE,...` or both (`1,train=4`) -> {"": default, key: value}; keys are train, infer, score
    (both stages of that kind) or a stage name (final-train: that stage only). Errors name the flag and pair."""
    values: dict[str, T] = {}
    for pair in re.split(r"[,\s]+", (text or "").strip()):
        if not pair:
            continue
        key, sep, value = pair.partition("=") if "=" in pair else ("", "", pair)
        if sep and (not key or not value):
            raise ValueError(f"{flag}: {pair!r} is neither VALUE nor STAGE=VALUE")
        if key and key not in STAGE_KINDS and key not in SLURM_STAGES:
            raise ValueError(
                f"{flag}: {key!r} is no stage; use train, infer, score or one of {', '.join(SLURM_STAGES)}"
            )
        if key in values:
            raise ValueError(f"{flag}: {'the default' if not key else repr(key)} is given twice")
        try:
            values[key] = check(value)
        except ValueError as e:
            raise ValueError(f"{flag}: {pair!r}: {e}") from None
    return values


def _count(minimum: int) -> Callable[[str], int]:
    def check(value: str) -> int:
        if not value.isdigit() or int(value) < minimum:
            raise ValueError(f"expected a whole number of at least {minimum}")
        return int(value)

    return check


def _time(value: str) -> str:
    if not TIME_PATTERN.fullmatch(value):
        raise ValueError("expected a Slurm time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    return value


def _partition(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError("expected a partition name (letters, digits, '_', '.', '-')")
    return value


def _lookup(values: dict[str, T], stage: str) -> T | None:
    """The value for a stage: its own, else its kind's, else the default."""
    if stage in values:
        return values[stage]
    kind = next((k for k, stages in STAGE_KINDS.items() if stage in stages), None)
    if kind is not None and kind in values:
        return values[kind]
    return values.get("")


@dataclass
class SlurmSettings:
    """Resources per stage, from the --slurm-* flags; checked before the first job is submitted."""

    partition: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)
    gpus_per_node: dict[str, int] = field(default_factory=dict)
    cpus: dict[str, int] = field(default_factory=dict)
    time: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    train_args: list[str] = field(default_factory=list)
    poll_seconds: float = POLL_SECONDS
    # The most CPUs any node of a partition has ("" for the default partition), from sinfo by check_cluster:
    # a job's default CPU count (this machine's share) is capped there, or Slurm would refuse the job.
    node_cpus: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_flags(cls, partition: str | None = None, nodes: str | None = None, gpus_per_node: str | None = None,
                   cpus: str | None = None, time_limit: str | None = None, args: str | None = None,
                   train_args: str | None = None) -> SlurmSettings:  # fmt: skip
        settings = cls(
            partition=parse_stage_values(partition, "--slurm-partition", _partition),
            nodes=parse_stage_values(nodes, "--slurm-nodes", _count(1)),
            gpus_per_node=parse_stage_values(gpus_per_node, "--slurm-gpus-per-node", _count(0)),
            cpus=parse_stage_values(cpus, "--slurm-cpus", _count(1)),
            time=parse_stage_values(time_limit, "--slurm-time", _time),
        )
        for flag, text, target in (("--slurm-args", args, settings.args),
                                   ("--slurm-train-args", train_args, settings.train_args)):  # fmt: skip
            try:
                target.extend(shlex.split(text or ""))
            except ValueError as e:
                raise ValueError(f"{flag} {text!r}: {e}") from None
        for stage in SLURM_STAGES:
            nodes_here = _lookup(settings.nodes, stage) or 1
            if nodes_here > 1 and stage not in TRAIN_STAGES:
                raise ValueError(f"--slurm-nodes: the {stage} stage runs one process; only training (train, "
                                 f"final-train) can use more than one node, got {nodes_here}")  # fmt: skip
        return settings

    def resources(self, stage: str, default_cpus: int) -> Resources:
        """The job resources of a stage; CPUs default to `default_cpus` (what a local item of it would use), at
        most the CPUs of the partition's largest node."""
        extra = [*self.args, *(self.train_args if stage in TRAIN_STAGES else [])]
        partition = _lookup(self.partition, stage)
        cpus = _lookup(self.cpus, stage)
        if cpus is None:
            cpus = min(default_cpus, self.node_cpus.get(partition or "", default_cpus))
        return Resources(nodes=_lookup(self.nodes, stage) or 1, gpus_per_node=_lookup(self.gpus_per_node, stage) or 0,
                         cpus=cpus, partition=partition, time=_lookup(self.time, stage), args=tuple(extra))  # fmt: skip

    def check_cluster(self) -> None:
        """Slurm's commands are on PATH, the controller answers and every named partition exists."""
        missing = [tool for tool in ("sbatch", "squeue", "sinfo") if shutil.which(tool) is None]
        if missing:
            raise SlurmError(
                f"--executor slurm: {', '.join(missing)} not found on PATH (is this a Slurm login node?)"
            )
        result = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SlurmError(f"--executor slurm: `sinfo` failed (exit code {result.returncode}): "
                             f"{result.stderr.strip() or result.stdout.strip()}")  # fmt: skip
        known = set(result.stdout.split())
        unknown = sorted(set(self.partition.values()) - known)
        if unknown:
            raise SlurmError(f"--slurm-partition: no partition {', '.join(unknown)} on this cluster "
                             f"(sinfo lists: {', '.join(sorted(known)) or 'none'})")  # fmt: skip
        self.node_cpus = partition_node_cpus()


def partition_node_cpus() -> dict[str, int]:
    """{partition: CPUs of its largest node}, the default partition also under ""; empty if sinfo says nothing
    usable (then no cap applies)."""
    result = subprocess.run(["sinfo", "-h", "-N", "-o", "%P %c"], capture_output=True, text=True, check=False)
    largest: dict[str, int] = {}
    if result.returncode != 0:
        return largest
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            continue
        name, cpus = fields[0], int(fields[1])
        keys = [name.rstrip("*"), ""] if name.endswith("*") else [name]
        for key in keys:
            largest[key] = max(largest.get(key, 0), cpus)
    return largest


# ---------------------------------------------------------------------------------------------- one job


@dataclass(frozen=True)
class JobFiles:
    """The files of one item's job, in WORK_DIR/slurm/<stage>/."""

    script: Path
    status: Path
    submitted: Path
    output: Path

    @classmethod
    def of(cls, folder: Path, name: str) -> JobFiles:
        return cls(
            folder / f"{name}.sh",
            folder / f"{name}.status",
            folder / f"{name}.job.json",
            folder / f"{name}.out",
        )

    def remove(self) -> None:
        """Forget the job (its item is marked done, or redone): a rerun must not take its result again."""
        self.submitted.unlink(missing_ok=True)
        self.status.unlink(missing_ok=True)


def job_name(work_dir: Path, stage: str, item: str) -> str:
    """`visatb-<6 hex of the work dir>-<stage>-<item>`: unique per chain, readable in squeue."""
    tag = hashlib.sha1(str(work_dir).encode()).hexdigest()[:6]
    return f"visatb-{tag}-{stage}-{item}"


def write_job_script(files: JobFiles, title: str, command: Sequence[str], env: dict[str, str], log: Path,
                     cwd: Path) -> None:  # fmt: skip
    """The job script: the same log as the local executor (`$ command`, then its output), then the status file."""
    header = "$ " + " ".join(shlex.quote(c) for c in command)
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    status = shlex.quote(str(files.status))
    text = (
        "#!/usr/bin/env bash\n"
        f"# {title}\n"
        "# Written and submitted by llava.visatb.chain --executor slurm; the chain reads the status file\n"
        "# (job id, exit code, start and end time) once Slurm no longer runs the job.\n"
        f"cd {shlex.quote(str(cwd))} || exit 1\n"
        f"{exports}"
        "started=$(date +%s.%N)\n"
        f"printf '%s\\n' {shlex.quote(header)} > {shlex.quote(str(log))}\n"
        f"{shlex.join(command)} >> {shlex.quote(str(log))} 2>&1\n"
        "code=$?\n"
        f'printf \'%s %s %s %s\\n\' "$SLURM_JOB_ID" "$code" "$started" "$(date +%s.%N)" > {status}.tmp\n'
        f"mv {status}.tmp {status}\n"
        'exit "$code"\n'
    )
    files.script.parent.mkdir(parents=True, exist_ok=True)
    files.script.write_text(text, encoding="utf-8")
    files.script.chmod(0o755)


def submit(files: JobFiles, name: str, resources: Resources) -> str:
    """sbatch the job script; the job id is in `files.submitted` before this returns."""
    files.status.unlink(missing_ok=True)
    command = ["sbatch", "--parsable", "--export=ALL", f"--job-name={name}", f"--output={files.output}",
               *resources.sbatch_flags(), str(files.script)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    job_id = result.stdout.strip().split(";")[0]
    if result.returncode != 0 or not job_id.isdigit():
        raise SlurmError(f"`{shlex.join(command)}` failed (exit code {result.returncode}): "
                         f"{result.stderr.strip() or result.stdout.strip()}")  # fmt: skip
    atomic_write_json(files.submitted, {"job_id": job_id, "name": name, "sbatch": command,
                                        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # fmt: skip
    return job_id


def submitted_job(files: JobFiles) -> tuple[str, str] | None:
    """(job id, job name) of an earlier submission of this item, if one is recorded."""
    if not files.submitted.is_file():
        return None
    try:
        record = load_json(files.submitted)
        return str(record["job_id"]), str(record["name"])
    except (ValueError, KeyError, TypeError):
        return None  # a torn or foreign file: the item is submitted again


def read_status(files: JobFiles, job_id: str) -> tuple[int, float] | None:
    """(exit code, seconds run) that job `job_id` wrote at its end, or None if it wrote none."""
    if not files.status.is_file():
        return None
    fields = files.status.read_text(encoding="utf-8").split()
    try:
        if len(fields) == 4 and fields[0] == job_id:
            return int(fields[1]), max(0.0, float(fields[3]) - float(fields[2]))
    except ValueError:
        pass
    return None  # torn, or written by another job


def job_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, name)} of the jobs Slurm still lists (running, waiting or recently ended)."""
    if not job_ids:
        return {}
    command = ["squeue", "-h", "--states=all", "-o", "%i|%T|%j", "-j", ",".join(job_ids)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return {}  # none of them is known any more
        raise SlurmError(
            f"`{shlex.join(command)}` failed (exit code {result.returncode}): {result.stderr.strip()}"
        )
    states = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


class JobWatcher:
    """One squeue call per poll for all jobs of a stage; tolerates squeue failing for a while."""

    def __init__(self, patience: float = SQUEUE_PATIENCE_SECONDS, say: Callable[[str], None] = print):
        self.patience = patience
        self.say = say
        self._failing_since: float | None = None

    def states(self, job_ids: Sequence[str]) -> dict[str, tuple[str, str]] | None:
        """The states, or None when squeue failed this time (the caller polls again)."""
        try:
            states = job_states(job_ids)
        except SlurmError as e:
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
                self.say(f"    note: {e}; retrying for up to {self.patience:.0f} s")
            elif now - self._failing_since > self.patience:
                raise SlurmError(f"{e} (failing for {now - self._failing_since:.0f} s)") from None
            return None
        self._failing_since = None
        return states


# The line a multi-node training prints when a rank lost contact with another (llava/train/dist_watch.py).
LOST_CONTACT = re.compile(r"^\[train\] error[^:]*: (rank \d+ on node \S+ lost contact with .*?)(?:; the collective failed.*)?$",
                          re.M)  # fmt: skip
# srun's line for a task that ended badly, in the order they ended: the first names the node that failed first
# (a rank killed outright, or crashed, leaves no line of its own behind).
SRUN_TASK_FAILED = re.compile(r"^srun: error: (\S+): task (\d+): (.+)$", re.M)
# torchrun's report of the rank it saw fail first: a block under "Root Cause (first observed failure):".
ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):\s*\n\[\d+\]:\s*\n((?:[ \t]+\w+\s*:.*\n?)+)")


def failed_node(text: str) -> str | None:
    """Which node and rank of a multi-node job failed first, from its log: the training's own lost-contact
    line, else srun's first failed task with torchrun's first observed failure. None when neither is there."""
    match = LOST_CONTACT.search(text)
    if match:
        return match.group(1)
    task = SRUN_TASK_FAILED.search(text)
    if not task:
        return None
    said = f"node {task.group(1)} failed first (srun task {task.group(2)}: {task.group(3).strip()}"
    # Every node's torchrun may report a rank; a rank a signal ended (negative exit code) is the cause, one that
    # exited with an error may only have lost its peer.
    causes = [dict(re.findall(r"^[ \t]+(\w+)\s*:[ \t]*(.*)$", block, re.M)) for block in ROOT_CAUSE.findall(text)]
    causes.sort(key=lambda fields: not fields.get("exitcode", "").startswith("-"))
    if causes:
        fields = causes[0]
        rank = fields.get("rank", "").split(" ")[0]
        if rank.isdigit():
            traceback = fields.get("traceback", "")
            if not traceback or traceback.startswith("To enable traceback"):  # an exception: its log has it
                traceback = f"exit code {fields.get('exitcode', '?').split(' ')[0]}"
            said += f"; torchrun: rank {rank}: {traceback}"
    return said + ")"


def name_lost_node(error: PipelineError, log: Path) -> PipelineError:
    """The failure of a training job, with the node (and rank) that failed first, from its log, on the first line."""
    try:
        named = failed_node(log.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return error
    if not named:
        return error
    first, _, rest = str(error).partition("\n")
    return PipelineError(f"{first}; {named}" + (f"\n{rest}" if rest else ""))


def is_live(state: str) -> bool:
    return state not in ENDED_STATES


def describe_end(state: str | None) -> str:
    if state is None:
        return "is gone from squeue"
    return f"ended {state}"


# ---------------------------------------------------------------------------------------------- executor


class SlurmExecutor(LocalExecutor):
    """Runs a stage's items as Slurm jobs (`slurm` set) and finishes each one as the local executor does."""

    slurm: SlurmSettings | None

    def _run_items_slurm(self, stage: str, prefix: str, pending: list[Item], jobs: int) -> None:
        """Submit every pending item of the stage as one Slurm job (or wait on the job an earlier run submitted),
        then poll squeue until all have ended. The first failure stops the chain; jobs still in flight keep
        running and a rerun waits on them."""
        assert self.slurm is not None
        total = len(pending)
        # CPUs per job by default: what a local item of this stage would use, so the jobs' OMP_NUM_THREADS (and
        # with it the numbers) match the local executor's, and as many jobs share a node as local items run.
        resources = self.slurm.resources(stage, default_cpus=max(1, (os.cpu_count() or 1) // jobs))
        files = {item.key: JobFiles.of(self.slurm_dir / stage, safe_name(item.key)) for item in pending}
        names = {item.key: job_name(self.work, stage, safe_name(item.key)) for item in pending}
        earlier = {item.key: submitted_job(files[item.key]) for item in pending}
        try:
            known = job_states([job[0] for job in earlier.values() if job])
        except SlurmError as e:
            raise PipelineError(f"{prefix} failed: {e}") from None
        in_flight: dict[str, Item] = {}

        def still_in_slurm() -> str:
            if not in_flight:
                return ""
            listed = ", ".join(f"job {job_id} ({item.key})" for job_id, item in in_flight.items())
            return (f"\n  still in Slurm: {listed}; a rerun waits on them "
                    f"(`scancel {' '.join(in_flight)}` stops them)")  # fmt: skip

        for index, item in enumerate(pending, 1):
            self.say(f"  [{index}/{total}] {item.label}")
            job_files, previous = files[item.key], earlier[item.key]
            if previous is not None:
                job_id, name = previous
                state = known.get(job_id)
                # The status file first: its job script writes it as its last step, so a job that wrote it has
                # done its work even while Slurm still lists it (RUNNING or COMPLETING for a moment after).
                status = read_status(job_files, job_id)
                if status is not None and status[0] == 0:
                    self.say(f"    Slurm job {job_id} of an earlier run finished with exit code 0; taking its result")
                    in_flight[job_id] = item
                    continue
                if status is None and state is not None and state[1] == name and is_live(state[0]):
                    self.say(f"    Slurm job {job_id} of an earlier run is {state[0]}; waiting on it")
                    in_flight[job_id] = item
                    continue
                ended = f"exit code {status[0]}" if status else describe_end(state[0] if state else None)
                self.say(f"    Slurm job {job_id} of an earlier run ended without success ({ended}); submitting again")
            log = self.item_log(stage, item)
            log.parent.mkdir(parents=True, exist_ok=True)
            env = self._item_env(item)
            if "OMP_NUM_THREADS" not in os.environ and not resources.gpus_per_node:
                # A CPU job computes with as many threads as it has CPUs (GPU jobs: the launcher decides).
                env["OMP_NUM_THREADS"] = str(resources.cpus)
            if resources.gpus_per_node and "NUM_GPUS" not in os.environ and "NUM_GPUS" not in env:
                env["NUM_GPUS"] = str(resources.gpus_per_node)
            write_job_script(job_files, f"VisATB chain {self.work}: stage {stage}, item {item.key}",
                                   item.command, env, log, REPO_ROOT)  # fmt: skip
            try:
                job_id = submit(job_files, names[item.key], resources)
            except SlurmError as e:
                raise PipelineError(f"{prefix} failed: {item.key}: {e}{still_in_slurm()}") from None
            self.say(f"    submitted: Slurm job {job_id} ({resources.describe()}); log {log}")
            in_flight[job_id] = item

        try:
            self._wait_for_jobs(stage, prefix, in_flight, files, total, still_in_slurm)
        except KeyboardInterrupt:
            raise PipelineError(f"{prefix} interrupted{still_in_slurm()}") from None

    def _wait_for_jobs(self, stage: str, prefix: str, in_flight: dict[str, Item], files: dict[str, JobFiles],
                       total: int, still_in_slurm: Callable[[], str]) -> None:  # fmt: skip
        """Poll squeue until every job in `in_flight` has ended; mark each finished item done as it ends."""
        assert self.slurm is not None
        watcher = JobWatcher(say=self.say)
        ended_at: dict[str, float] = {}
        failures: list[PipelineError] = []
        finished = 0
        while in_flight:
            try:
                states = watcher.states(list(in_flight))
            except SlurmError as e:
                raise PipelineError(f"{prefix} failed: {e}{still_in_slurm()}") from None
            for job_id, item in list(in_flight.items()) if states is not None else []:
                state = states.get(job_id)
                if state is not None and is_live(state[0]):
                    continue
                job_files, log = files[item.key], self.item_log(stage, item)
                status = read_status(job_files, job_id)
                if status is None:
                    if state is None or state[0] not in KILLED_STATES:
                        first_seen = ended_at.setdefault(job_id, time.monotonic())
                        if time.monotonic() - first_seen < STATUS_GRACE_SECONDS:
                            continue  # a network file system may show the status file a little later
                    ended = describe_end(state[0] if state else None)
                    said = f"\n{log_tail(job_files.output, 5)}" if job_files.output.is_file() else ""
                    failures.append(PipelineError(
                        f"{item.key}: Slurm job {job_id} {ended} without an exit status (cancelled, out of time "
                        f"or killed); log {log}; Slurm's output {job_files.output}{said}"))  # fmt: skip
                else:
                    code, seconds = status
                    try:
                        extras = self._finish_item(stage, item, log, code, seconds, job=f"Slurm job {job_id}: ",
                                                   record={"slurm_job": job_id})  # fmt: skip
                    except PipelineError as e:
                        failures.append(name_lost_node(e, log))
                    else:
                        job_files.remove()
                        finished += 1
                        note = f" ({extras['summary']})" if extras.get("summary") else ""
                        self.say(f"    done {finished}/{total}: {item.key} in {seconds:.1f} s (Slurm job {job_id}){note}")
                del in_flight[job_id]
            if failures:
                raise PipelineError(f"{prefix} failed: {failures[0]}{still_in_slurm()}")
            if in_flight:
                time.sleep(self.slurm.poll_seconds)
