#!/usr/bin/env bash
# MME: perception and cognition scores (acc + acc+ per subtask).
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/mme.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

MME_DIR="$EVAL_DIR/MME"
MME_DATA="$MME_DIR/MME_Benchmark_release_version"
ANSWERS="$MME_DIR/answers/$MODEL_NAME.jsonl"

run_generation llava.eval.model_vqa_loader "$MME_DIR/llava_mme.jsonl" "$MME_DIR/answers/$MODEL_NAME" "$ANSWERS" \
    --image-folder "$MME_DATA"

"$PYTHON" -m llava.eval.eval_mme \
    --answers-file "$ANSWERS" \
    --data-dir "$MME_DATA" \
    --results-dir "$MME_DIR/eval_tool/answers/$MODEL_NAME" \
    --output-result "$MME_DIR/answers/${MODEL_NAME}_result.json"
