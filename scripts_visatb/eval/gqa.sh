#!/usr/bin/env bash
# GQA testdev-balanced: official prediction file and the local accuracy.
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/gqa.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

SPLIT="${SPLIT:-llava_gqa_testdev_balanced}"
GQA_DIR="$EVAL_DIR/gqa"
GQA_DATA="$GQA_DIR/data"
ANSWERS_DIR="$GQA_DIR/answers/$SPLIT/$MODEL_NAME"

run_generation llava.eval.model_vqa_loader "$GQA_DIR/$SPLIT.jsonl" "$ANSWERS_DIR" "$ANSWERS_DIR/merge.jsonl" \
    --image-folder "$GQA_DATA/images"

"$PYTHON" -m llava.eval.eval_gqa \
    --src "$ANSWERS_DIR/merge.jsonl" \
    --dst "$GQA_DATA/testdev_balanced_predictions.json" \
    --questions "$GQA_DATA/testdev_balanced_questions.json" \
    --output-result "$ANSWERS_DIR/result.json"
