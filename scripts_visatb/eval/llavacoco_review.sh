#!/usr/bin/env bash
# LLaVA-Bench COCO, step 2 of 2: the GPT review of llavacoco.sh's answers against GPT-4's, and its summary
# (relative score per category: conversation, detail, complex reasoning, and overall), as the release's
# script of the same name. Reviews are appended as they arrive; a rerun asks only for the missing ones.
# Usage: CKPT=<model> [EVAL_DIR=...] [JUDGE_MODEL=...] bash scripts_visatb/eval/llavacoco_review.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

JUDGE_MODEL="${JUDGE_MODEL:-gpt-4-0314}"
COCO_DIR="$EVAL_DIR/llava-bench-coco"
ANSWERS="$COCO_DIR/answers/$MODEL_NAME.jsonl"
REVIEW="$COCO_DIR/reviews/$MODEL_NAME.jsonl"

require_openai_key
require_file "$COCO_DIR/qa90_questions.jsonl" "$COCO_DIR/caps_boxes_coco2014_val_80.jsonl" \
    "$COCO_DIR/qa90_gpt4_answer.jsonl"
require_answers "$ANSWERS" llavacoco.sh

"$PYTHON" -m llava.eval.eval_gpt_review_bench \
    --question "$COCO_DIR/qa90_questions.jsonl" \
    --context "$COCO_DIR/caps_boxes_coco2014_val_80.jsonl" \
    --answer-list "$COCO_DIR/qa90_gpt4_answer.jsonl" "$ANSWERS" \
    --output "$REVIEW" \
    --judge-model "$JUDGE_MODEL"

"$PYTHON" -m llava.eval.summarize_gpt_review -f "$REVIEW"
