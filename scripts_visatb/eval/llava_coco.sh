#!/usr/bin/env bash
# LLaVA-Bench COCO (90 questions; the Chat benchmark's metric): answers, GPT review and summary in one go,
# i.e. llavacoco.sh then llavacoco_review.sh (the release's two steps). The key is checked first.
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/llava_coco.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

COCO_DIR="$EVAL_DIR/llava-bench-coco"
require_openai_key
require_file "$COCO_DIR/caps_boxes_coco2014_val_80.jsonl" "$COCO_DIR/qa90_gpt4_answer.jsonl"
HERE="$(dirname "${BASH_SOURCE[0]}")"
bash "$HERE/llavacoco.sh" "$@"
bash "$HERE/llavacoco_review.sh"
