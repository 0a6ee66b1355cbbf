#!/usr/bin/env bash
# The demo's seed-to-seed spread: run scripts_visatb/demo.sh for seeds 0-4 and once more with
# OMP_NUM_THREADS=1, then tabulate per task the own-data gain, the std of V(mini) across seeds and their
# ratio (at least 3 is the target), the learning checks of every run and the headline figures as mean ± std.
#   bash scripts_visatb/demo_seeds.sh                                  # about 6 x the demo's time
#   bash scripts_visatb/demo_seeds.sh --seeds 0 1 2 --output-dir outputs/seeds3
#   bash scripts_visatb/demo_seeds.sh --runs outputs/seeds/seed0 outputs/seeds/seed1   # tabulate finished runs
#   bash scripts_visatb/demo_seeds.sh --cpu-path avx2 --output-dir outputs/seeds-avx2  # another floating-point path (x86)
# Exit code 0 when every gain and every check passed, 3 when not.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${VISATB_SETUP:-auto}" != "skip" ]; then
    source scripts_visatb/setup_env.sh
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$#" -eq 0 ]; then
    set -- --seeds 0 1 2 3 4 --threads-variant 1 --output-dir outputs/seeds
fi
exec python -m llava.visatb.toy.seed_spread "$@"
