#!/usr/bin/env bash
# GQA testdev-balanced: official prediction file and the local accuracy.
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] [IMAGE_FOLDER=...] bash scripts_visatb/eval/gqa.sh
# (see _common.sh, README.md). IMAGE_FOLDER: GQA's images elsewhere than $EVAL_DIR/gqa/data/images.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

SPLIT="${SPLIT:-llava_gqa_testdev_balanced}"
GQA_DIR="$EVAL_DIR/gqa"
GQA_DATA="$GQA_DIR/data"
ANSWERS_DIR="$GQA_DIR/answers/$SPLIT/$MODEL_NAME"
IMAGE_FOLDER="${IMAGE_FOLDER:-$GQA_DATA/images}"
if [[ ! -d "$IMAGE_FOLDER" ]]; then
    echo "error: GQA image folder $IMAGE_FOLDER not found (set IMAGE_FOLDER, or put the images there)" >&2
    exit 1
fi

run_generation llava.eval.model_vqa_loader "$GQA_DIR/$SPLIT.jsonl" "$ANSWERS_DIR" "$ANSWERS_DIR/merge.jsonl" \
    --image-folder "$IMAGE_FOLDER"

"$PYTHON" -m llava.eval.eval_gqa \
    --src "$ANSWERS_DIR/merge.jsonl" \
    --dst "$GQA_DATA/testdev_balanced_predictions.json" \
    --questions "$GQA_DATA/testdev_balanced_questions.json" \
    --output-result "$ANSWERS_DIR/result.json"
