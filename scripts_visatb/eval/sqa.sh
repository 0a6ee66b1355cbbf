#!/usr/bin/env bash
# ScienceQA test (single-prediction prompt): accuracy and IMG-accuracy.
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/sqa.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

SQA_DIR="$EVAL_DIR/scienceqa"
ANSWERS="$SQA_DIR/answers/$MODEL_NAME.jsonl"

run_generation llava.eval.model_vqa_science "$SQA_DIR/llava_test_CQM-A.json" "$SQA_DIR/answers/$MODEL_NAME" "$ANSWERS" \
    --image-folder "$SQA_DIR/images/test" \
    --single-pred-prompt

"$PYTHON" -m llava.eval.eval_science_qa \
    --base-dir "$SQA_DIR" \
    --result-file "$ANSWERS" \
    --output-file "$SQA_DIR/answers/${MODEL_NAME}_output.jsonl" \
    --output-result "$SQA_DIR/answers/${MODEL_NAME}_result.json"
