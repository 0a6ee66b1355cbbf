"""How much of the toy demo's signal survives a change of seed: the measurement behind docs/reproducibility.md's seed tables.

Runs `scripts_visatb/demo.sh` once per seed (and optionally once more with another OMP_NUM_THREADS), then
tabulates, per scored task j:
- the own-data gain g_j = V_j(j+mini) - V_j(mini) of every run (min and mean over the runs);
- the seed-to-seed standard deviation of V_j(mini) (sample std over the seed runs);
- the ratio min gain / std, which the demo needs to be at least 3 on every task;
and per run whether every learning check passed, plus the headline figures (VisATB and EW per task, the
final weights) as mean +- std.

    python -m llava.visatb.toy.seed_spread --seeds 0 1 2 3 4 --threads-variant 1 --output-dir outputs/seeds
    python -m llava.visatb.toy.seed_spread --runs outputs/seeds/seed0 outputs/seeds/seed1 ...   # tabulate only

Two VMs with one CPU type give the same digits; another CPU takes other kernels and every number moves.
`--cpu-path avx2` shows that second case on one x86 machine: every run uses PyTorch's, MKL's and oneDNN's
AVX2 kernels (what a CPU without AVX-512 runs), another floating-point path with the same seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava.utils import atomic_write_text, load_json
from llava.visatb.results.report import learning_checks
from llava.visatb.scores import EW, MINI, VISATB

REPO_ROOT = Path(__file__).resolve().parents[3]
REQUIRED_RATIO = 3.0
# --cpu-path: the environment that caps x86 kernels at an instruction set, and the machines it applies to.
CPU_PATHS: dict[str, dict[str, str]] = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
X86_MACHINES = ("x86_64", "amd64", "i686", "i386")


@dataclass
class Run:
    """One finished demo run: its label, scores, weights and task metrics."""

    label: str
    folder: Path
    scores: dict[str, dict[str, float]]
    weights: dict[str, Any]
    metrics: dict[str, str]
    seconds: float | None = None

    @property
    def tasks(self) -> list[str]:
        return list(self.metrics)


def load_run(folder: str | os.PathLike, label: str | None = None, seconds: float | None = None) -> Run:
    """Read a finished demo folder (scores.json, weights.json, pipeline.json); errors name the file."""
    folder = Path(folder)
    for name in ("scores.json", "weights.json", "pipeline.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing; did the demo in {folder} finish?")
    config = load_json(folder / "pipeline.json")
    log = folder.with_name(folder.name + ".log")  # written beside the folder by run_demo
    if seconds is None and log.is_file():
        match = re.search(r"^\[demo\] finished in (\d+) s", log.read_text(encoding="utf-8", errors="replace"), re.M)
        seconds = float(match[1]) if match else None
    return Run(label or folder.name, folder, load_json(folder / "scores.json"), load_json(folder / "weights.json"),
               dict(config["metrics"]), seconds)  # fmt: skip


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _mean_std(values: Sequence[float], metric: str) -> str:
    scale = 100.0 if metric in ("qa", "grounding") else 1.0
    digits = 2 if scale == 100.0 else 4
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * _std(values):.{digits}f}"


def gain_table(seed_runs: Sequence[Run], all_runs: Sequence[Run]) -> tuple[list[dict[str, Any]], str]:
    """Per task: own gains over every run, std of V_j(mini) over the seed runs, and their ratio (markdown too)."""
    tasks = seed_runs[0].tasks
    rows = []
    for task in tasks:
        metric = seed_runs[0].metrics[task]
        gains = [run.scores[task][task] - run.scores[MINI][task] for run in all_runs]
        mini_std = _std([run.scores[MINI][task] for run in seed_runs])
        ratio = min(gains) / mini_std if mini_std > 0 else float("inf")
        rows.append({"task": task, "metric": metric, "gains": gains, "min_gain": min(gains),
                     "mean_gain": statistics.mean(gains), "mini_std": mini_std, "ratio": ratio,
                     "ok": min(gains) > 0 and ratio >= REQUIRED_RATIO})  # fmt: skip
    scale = {task: 100.0 if seed_runs[0].metrics[task] in ("qa", "grounding") else 1.0 for task in tasks}
    lines = ["| task (metric) | own gain per run | min gain | std of V(mini) over seeds | min gain / std |",
             "|---|---|---:|---:|---:|"]  # fmt: skip
    for row in rows:
        s = scale[row["task"]]
        unit = " pts" if s == 100.0 else ""
        per_run = ", ".join(f"{s * g:.2f}" for g in row["gains"])
        ratio = "inf" if row["ratio"] == float("inf") else f"{row['ratio']:.1f}"
        lines.append(f"| {row['task']} ({row['metric']}) | {per_run} | {s * row['min_gain']:.2f}{unit} | "
                     f"{s * row['mini_std']:.2f}{unit} | {ratio}{'' if row['ok'] else ' (below 3)'} |")  # fmt: skip
    return rows, "\n".join(lines)


def checks_table(runs: Sequence[Run]) -> tuple[list[dict[str, Any]], str]:
    """Per run: each learning check's status, and the wall time when known."""
    rows = []
    lines = ["| run | " + " | ".join(c.name for c in learning_checks(runs[0].scores, runs[0].tasks,
                                                                      runs[0].metrics)) + " | wall time |"]  # fmt: skip
    lines.append("|---|" + "---|" * (len(lines[0].split("|")) - 3))
    for run in runs:
        checks = learning_checks(run.scores, run.tasks, run.metrics)
        rows.append({"run": run.label, "checks": {c.name: c.status for c in checks},
                     "failed": [f"{c.name}: {c.detail}" for c in checks if c.failed], "seconds": run.seconds})  # fmt: skip
        wall = f"{run.seconds:.0f} s" if run.seconds is not None else "-"
        lines.append(f"| {run.label} | " + " | ".join(c.status for c in checks) + f" | {wall} |")
    return rows, "\n".join(lines)


def headline_table(runs: Sequence[Run]) -> str:
    """Mean ± std over the runs of the final models' scores per task and of the VisATB weights."""
    tasks, metrics = runs[0].tasks, runs[0].metrics
    lines = ["| | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for model in (MINI, EW, VISATB):
        if all(model in run.scores for run in runs):
            cells = [_mean_std([run.scores[model][t] for run in runs], metrics[t]) for t in tasks]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    own = [_mean_std([run.scores[t][t] for run in runs], metrics[t]) for t in tasks]
    lines.append("| own task-plus-mini | " + " | ".join(own) + " |")
    weights = []
    for t in tasks:
        values = [run.weights["visatb_weights"][run.weights["tasks"].index(t)] for run in runs]
        weights.append(f"{statistics.mean(values):.3f} ± {_std(values):.3f}")
    lines.append("| VisATB weight | " + " | ".join(weights) + " |")
    return "\n".join(lines)


def summarize(seed_runs: Sequence[Run], extra_runs: Sequence[Run] = ()) -> tuple[dict[str, Any], str]:
    """The whole measurement as JSON and markdown; `extra_runs` (other thread counts) join gains and checks only."""
    if len(seed_runs) < 2:
        raise ValueError(f"need at least two seed runs for a spread, got {len(seed_runs)}")
    all_runs = [*seed_runs, *extra_runs]
    gains, gains_md = gain_table(seed_runs, all_runs)
    checks, checks_md = checks_table(all_runs)
    every_check = all(not row["failed"] for row in checks)
    every_gain = all(row["ok"] for row in gains)
    verdict = (f"own gain >= {REQUIRED_RATIO:g} x seed std on every task and run: {'yes' if every_gain else 'NO'}; "
               f"every learning check passed on every run: {'yes' if every_check else 'NO'}")  # fmt: skip
    markdown = "\n\n".join([
        f"Runs: {', '.join(r.label for r in all_runs)} (the std is over the {len(seed_runs)} seed runs).",
        gains_md, checks_md, "Scores and weights over the seed runs (mean ± std; accuracies in %):",
        headline_table(seed_runs), verdict,
    ])  # fmt: skip
    data = {"runs": [r.label for r in all_runs], "gains": gains, "checks": checks, "every_gain_ok": every_gain,
            "every_check_passed": every_check}  # fmt: skip
    return data, markdown + "\n"


def run_demo(output_dir: Path, seed: int, threads: int | None, extra_env: Mapping[str, str], log: Path) -> float:
    """Run the demo once into `output_dir`; returns its wall time in seconds (raises with the log on failure)."""
    env = {**os.environ, **extra_env, "OUTPUT_DIR": str(output_dir), "SEED": str(seed)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        result = subprocess.run(["bash", str(REPO_ROOT / "scripts_visatb" / "demo.sh")], stdout=handle,
                                stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, check=False)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"the demo with seed {seed} failed (exit {result.returncode}); see {log}")
    return time.monotonic() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Seed-to-seed spread of the toy demo (see the module docstring).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads-variant", type=int, help="also run the first seed with this OMP_NUM_THREADS")
    parser.add_argument("--output-dir", default="outputs/seeds", help="one demo folder per run goes here")
    parser.add_argument("--runs", nargs="+", help="tabulate these finished demo folders instead of running")
    parser.add_argument("--extra-runs", nargs="*", default=[], help="with --runs: runs that join gains/checks only")
    parser.add_argument("--output", help="also write the markdown here (default: OUTPUT_DIR/seed_spread.md)")
    parser.add_argument("--cpu-path", choices=sorted(CPU_PATHS),
                        help="run every demo on x86 kernels capped at this instruction set (labels get -avx2)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.cpu_path and args.runs:
            raise ValueError("--cpu-path applies to the runs this command makes, not to --runs")
        if args.cpu_path and platform.machine().lower() not in X86_MACHINES:
            raise ValueError(f"--cpu-path {args.cpu_path} caps x86 kernels; this machine is {platform.machine()}")
        cpu_env = CPU_PATHS.get(args.cpu_path or "", {})
        suffix = f"-{args.cpu_path}" if args.cpu_path else ""
        if args.runs:
            seed_runs = [load_run(f) for f in args.runs]
            extra_runs = [load_run(f) for f in args.extra_runs]
            out = Path(args.output) if args.output else None
        else:
            root = Path(args.output_dir)
            root.mkdir(parents=True, exist_ok=True)
            plan = [(f"seed{s}{suffix}", s, None) for s in args.seeds]
            if args.threads_variant is not None:
                plan.append((f"seed{args.seeds[0]}-threads{args.threads_variant}{suffix}", args.seeds[0],
                             args.threads_variant))  # fmt: skip
            seed_runs, extra_runs = [], []
            for label, seed, threads in plan:
                print(f"[seeds] {label}: bash scripts_visatb/demo.sh -> {root / label}", flush=True)
                seconds = run_demo(root / label, seed, threads, cpu_env, root / f"{label}.log")
                print(f"[seeds] {label}: finished in {seconds:.0f} s", flush=True)
                run = load_run(root / label, label, seconds)
                (extra_runs if threads is not None else seed_runs).append(run)
            out = Path(args.output) if args.output else root / "seed_spread.md"
        data, markdown = summarize(seed_runs, extra_runs)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(markdown)
    if out is not None:
        atomic_write_text(out, markdown)
        atomic_write_text(out.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0 if data["every_gain_ok"] and data["every_check_passed"] else 3


if __name__ == "__main__":
    sys.exit(main())
