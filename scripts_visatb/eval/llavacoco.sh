#!/usr/bin/env bash
# LLaVA-Bench COCO (90 questions; the Chat benchmark's metric), step 1 of 2: the model's answers only (no
# judge, no key), as the release's script of the same name. Step 2 is llavacoco_review.sh; llava_coco.sh
# runs both. Extra arguments go to llava.eval.model_vqa (e.g. --max_new_tokens 512).
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/llavacoco.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

COCO_DIR="$EVAL_DIR/llava-bench-coco"
IMAGE_FOLDER="${IMAGE_FOLDER:-$COCO_DIR/images}"
ANSWERS="$COCO_DIR/answers/$MODEL_NAME.jsonl"

run_generation llava.eval.model_vqa "$COCO_DIR/qa90_questions.jsonl" "$COCO_DIR/answers/$MODEL_NAME" "$ANSWERS" \
    --image-folder "$IMAGE_FOLDER" "$@"
