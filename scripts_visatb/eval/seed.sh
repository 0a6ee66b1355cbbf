#!/usr/bin/env bash
# SEED-Bench: accuracy per question type, SEED-Image and overall; leaderboard file.
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/seed.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

SEED_DIR="$EVAL_DIR/seed_bench"
ANSWERS_DIR="$SEED_DIR/answers/$MODEL_NAME"

run_generation llava.eval.model_vqa_loader "$SEED_DIR/llava-seed-bench.jsonl" "$ANSWERS_DIR" "$ANSWERS_DIR/merge.jsonl" \
    --image-folder "$SEED_DIR"

"$PYTHON" -m llava.eval.eval_seed \
    --annotation-file "$SEED_DIR/SEED-Bench.json" \
    --result-file "$ANSWERS_DIR/merge.jsonl" \
    --result-upload-file "$SEED_DIR/answers_upload/$MODEL_NAME.jsonl" \
    --output-result "$ANSWERS_DIR/result.json"
