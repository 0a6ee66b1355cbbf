#!/usr/bin/env bash
# The test command: set up .venv (pinned set) if needed, then run the test suite. Extra args go to pytest.
# Without arguments it runs everything (CI). The quick unit run leaves out the tests marked `slow` (the demo,
# trainings, chains, Slurm, torchrun/DDP, ZeRO-3; markers in pyproject.toml):
#   bash scripts_visatb/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts_visatb/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Tiny models: one thread each avoids oversubscribing small machines when tests start subprocesses.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest "$@"
