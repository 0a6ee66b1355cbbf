#!/usr/bin/env bash
# VizWiz test: answers normalised for the EvalAI server (answers_upload/<model>.json).
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/vizwiz.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

VIZWIZ_DIR="$EVAL_DIR/vizwiz"
QUESTIONS="$VIZWIZ_DIR/llava_test.jsonl"
ANSWERS="$VIZWIZ_DIR/answers/$MODEL_NAME.jsonl"

run_generation llava.eval.model_vqa_loader "$QUESTIONS" "$VIZWIZ_DIR/answers/$MODEL_NAME" "$ANSWERS" \
    --image-folder "$VIZWIZ_DIR/test"

"$PYTHON" -m llava.eval.convert_vizwiz_for_submission \
    --annotation-file "$QUESTIONS" \
    --result-file "$ANSWERS" \
    --result-upload-file "$VIZWIZ_DIR/answers_upload/$MODEL_NAME.json"
