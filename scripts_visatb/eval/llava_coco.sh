#!/usr/bin/env bash
# LLaVA-Bench COCO (90 questions; the Chat benchmark's metric): GPT-judged review and summary.
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/llava_coco.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

JUDGE_MODEL="${JUDGE_MODEL:-gpt-4-0314}"
COCO_DIR="$EVAL_DIR/llava-bench-coco"
IMAGE_FOLDER="${IMAGE_FOLDER:-$COCO_DIR/images}"
ANSWERS="$COCO_DIR/answers/$MODEL_NAME.jsonl"
REVIEW="$COCO_DIR/reviews/$MODEL_NAME.jsonl"

require_openai_key
require_file "$COCO_DIR/caps_boxes_coco2014_val_80.jsonl" "$COCO_DIR/qa90_gpt4_answer.jsonl"
run_generation llava.eval.model_vqa "$COCO_DIR/qa90_questions.jsonl" "$COCO_DIR/answers/$MODEL_NAME" "$ANSWERS" \
    --image-folder "$IMAGE_FOLDER"

"$PYTHON" -m llava.eval.eval_gpt_review_bench \
    --question "$COCO_DIR/qa90_questions.jsonl" \
    --context "$COCO_DIR/caps_boxes_coco2014_val_80.jsonl" \
    --answer-list "$COCO_DIR/qa90_gpt4_answer.jsonl" "$ANSWERS" \
    --output "$REVIEW" \
    --judge-model "$JUDGE_MODEL"

"$PYTHON" -m llava.eval.summarize_gpt_review -f "$REVIEW"
