#!/usr/bin/env bash
# Slurm and munge for the Slurm tests (tests/test_slurm.py, tests/test_multinode.py) and
# scripts_visatb/local_slurm.sh: installs Debian's slurm-wlm (slurmctld, slurmd, sbatch, ...) and munge with apt
# when they are missing. Needs root; a machine that already has them (a cluster's login node) is left alone.
# .ci/run calls it.
set -euo pipefail

missing=()
for tool in munged slurmctld slurmd sbatch squeue scancel sinfo scontrol; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "[setup_slurm] Slurm and munge present: $(slurmd -V), $(munged -V 2>&1 | cut -d" " -f1)" >&2
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "[setup_slurm] missing ${missing[*]}; installing slurm-wlm and munge needs root (apt-get)" >&2
    exit 1
fi
echo "[setup_slurm] missing ${missing[*]}: apt-get install slurm-wlm munge" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq slurm-wlm munge >/dev/null
echo "[setup_slurm] installed: $(slurmd -V), $(munged -V 2>&1 | cut -d" " -f1)" >&2
