#!/usr/bin/env bash
# POPE (COCO adversarial, popular, random): accuracy, precision, recall, F1, yes-ratio.
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/pope.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

POPE_DIR="$EVAL_DIR/pope"
QUESTIONS="$POPE_DIR/llava_pope_test.jsonl"
ANSWERS="$POPE_DIR/answers/$MODEL_NAME.jsonl"

run_generation llava.eval.model_vqa_loader "$QUESTIONS" "$POPE_DIR/answers/$MODEL_NAME" "$ANSWERS" \
    --image-folder "$POPE_DIR/val2014"

"$PYTHON" -m llava.eval.eval_pope \
    --annotation-dir "$POPE_DIR/coco" \
    --question-file "$QUESTIONS" \
    --result-file "$ANSWERS" \
    --output-result "$POPE_DIR/answers/${MODEL_NAME}_result.json"
