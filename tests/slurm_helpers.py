"""A Slurm cluster on this machine for the tests (scripts_visatb/local_slurm.sh): one node, or n1..nN."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo", "scontrol")


def slurm_unavailable() -> str | None:
    """Why no cluster can start here (None: it can)."""
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)} missing; scripts_visatb/setup_slurm.sh installs them)"
    if os.geteuid() != 0:
        return "the test cluster's daemons (and its /etc/hosts lines) must be started as root"
    return None


def local_cluster(folder: Path, nodes: int = 1) -> Iterator[Path]:
    """Start the cluster in `folder`, point SLURM_CONF at it while the caller's fixture yields, stop it after.
    Skips without Slurm or root, and fails instead under VISATB_REQUIRE_SLURM=1 (CI)."""
    reason = slurm_unavailable()
    if reason:
        if os.environ.get("VISATB_REQUIRE_SLURM") == "1":
            pytest.fail(f"VISATB_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    script = str(REPO / "scripts_visatb" / "local_slurm.sh")
    env = {**os.environ, **({"NODES": str(nodes)} if nodes > 1 else {})}
    started = subprocess.run(["bash", script, "start", str(folder)], env=env, capture_output=True, text=True,
                             check=False)  # fmt: skip
    previous = os.environ.get("SLURM_CONF")
    try:
        assert started.returncode == 0, started.stderr
        os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
        yield folder
    finally:
        subprocess.run(["bash", script, "stop", str(folder)], capture_output=True, text=True, check=False)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
