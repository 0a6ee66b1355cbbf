#!/usr/bin/env bash
# The paper's Table 3 as one command: every weighting method against single-task (STL) models, with dI and dE.
#   bash scripts_visatb/compare_methods.sh                     # the embedded toy, seed 0 (CPU)
#   SEEDS="0 1 2" bash scripts_visatb/compare_methods.sh       # per seed, then mean +- std over the seeds
#   ABLATIONS="alpha temperature difficulty" bash scripts_visatb/compare_methods.sh   # and Table 8's rows
#   COMPARE_REDUCED=1 bash scripts_visatb/compare_methods.sh   # a short version (a quarter of the data)
# Per seed it runs scripts_visatb/demo.sh (the same variables) with STL=1 and METHODS (default: every method,
# METHOD_KEYS of llava/visatb/scores.py) in OUTPUT_DIR/seed<N>: the preparation models, one model per task
# alone (alone:<task>), every method's final model, their scores, then comparison.json, comparison.md and
# comparison.png (dI against dE).
# Models already trained there (by an earlier run of this script, of demo.sh or of demo_seeds.sh with the same
# OUTPUT_DIR/seed<N>) are reused, never retrained. With several seeds, OUTPUT_DIR/comparison_seeds.{json,md} give
# each method's dI and dE as mean +- std and say on how many seeds VisATB's dI is above EW's.
# Real data: set the run_visatb.sh variables (TASK_PRESET=academic, DATA_PATH, VAL_DIR, BASE_MODEL_PATH, ...)
# and COMPARE_CHAIN=scripts_visatb/run_visatb.sh; the chain then runs the paper's Table 3 on GPUs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUTPUT_DIR="${OUTPUT_DIR:-outputs/compare}"
SEEDS="${SEEDS:-0}"
ABLATIONS="${ABLATIONS:-}"
COMPARE_CHAIN="${COMPARE_CHAIN:-scripts_visatb/demo.sh}"   # or scripts_visatb/run_visatb.sh for real data
COMPARE_REDUCED="${COMPARE_REDUCED:-0}"
if [ "$COMPARE_REDUCED" = "1" ]; then
    # A short version: a quarter of the toy data and a shorter alignment pretraining (no learning claims).
    export DEMO_SCALE="${DEMO_SCALE:-0.25}" DEMO_PRETRAIN_STEPS="${DEMO_PRETRAIN_STEPS:-400}"
fi

if [ "${VISATB_SETUP:-auto}" != "skip" ]; then
    source scripts_visatb/setup_env.sh
    export VISATB_SETUP=skip
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
defaults="$(python -m llava.visatb.defaults --shell)"   # METHOD_KEYS: every weighting method
eval "$defaults"
METHODS="${METHODS:-$METHOD_KEYS}"
export METHODS ABLATIONS STL=1 DEMO_EW_BASELINE=1

start_time=$(date +%s)
comparisons=()
for seed in $SEEDS; do
    dir="$OUTPUT_DIR/seed$seed"
    echo "[compare] seed $seed -> $dir ($COMPARE_CHAIN; methods $METHODS${ABLATIONS:+; ablations $ABLATIONS})"
    if [ "$COMPARE_CHAIN" = "scripts_visatb/demo.sh" ]; then
        OUTPUT_DIR="$dir" SEED="$seed" bash scripts_visatb/demo.sh "$@"
    else
        WORK_DIR="$dir" SEED="$seed" bash "$COMPARE_CHAIN" "$@"
    fi
    comparisons+=("$dir/comparison.json")
done

if [ "${#comparisons[@]}" -gt 1 ]; then
    echo "[compare] over the seeds ($SEEDS)"
    python -m llava.visatb.results.compare --summarize "${comparisons[@]}" --output "$OUTPUT_DIR/comparison_seeds.json" \
        --markdown "$OUTPUT_DIR/comparison_seeds.md"
else
    cat "${comparisons[0]%.json}.md"
fi
echo "[compare] finished in $(( $(date +%s) - start_time )) s; comparisons: ${comparisons[*]}"
