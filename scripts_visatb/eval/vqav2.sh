#!/usr/bin/env bash
# VQAv2 test-dev: answers normalised for the EvalAI server (answers_upload/<split>/<model>.json).
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/vqav2.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

SPLIT="${SPLIT:-llava_vqav2_mscoco_test-dev2015}"
VQAV2_DIR="$EVAL_DIR/vqav2"
ANSWERS_DIR="$VQAV2_DIR/answers/$SPLIT/$MODEL_NAME"

run_generation llava.eval.model_vqa_loader "$VQAV2_DIR/$SPLIT.jsonl" "$ANSWERS_DIR" "$ANSWERS_DIR/merge.jsonl" \
    --image-folder "$VQAV2_DIR/test2015"

"$PYTHON" -m llava.eval.convert_vqav2_for_submission --dir "$VQAV2_DIR" --split "$SPLIT" --ckpt "$MODEL_NAME"
