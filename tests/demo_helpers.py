"""The demo as the end-to-end tests run it (tests/test_pipeline.py, tests/test_slurm.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_demo(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`scripts_visatb/demo.sh` (the full demo, EW baseline included) into `out` with this test's python; `env`
    adds variables. Run as the README runs it: without the test command's OMP_NUM_THREADS=1 (unless `env` sets
    one), so the toy model's build (one process) uses every core and the chain gives each of its two parallel
    commands its share (one thread each on two cores); EW's training shares the final stage with VisATB's, so
    it adds little time, and scripts_visatb/compare_methods.sh reuses it."""
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env = {**base, "OUTPUT_DIR": str(out), "DEMO_REDUCED": "0", "VISATB_SETUP": "skip",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"], **(env or {})}  # fmt: skip
    return subprocess.run(["bash", str(REPO / "scripts_visatb" / "demo.sh"), *extra], env=env, cwd=REPO,
                          capture_output=True, text=True, check=False)  # fmt: skip


def score_table(report_text: str) -> list[str]:
    """The score table's rows of a report.md (header, rule and one row per model)."""
    lines = report_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]
