#!/usr/bin/env bash
# MM-Vet: results file for the official (GPT-4) evaluator.
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/mmvet.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

MMVET_DIR="$EVAL_DIR/mm-vet"
ANSWERS="$MMVET_DIR/answers/$MODEL_NAME.jsonl"

run_generation llava.eval.model_vqa "$MMVET_DIR/llava-mm-vet.jsonl" "$MMVET_DIR/answers/$MODEL_NAME" "$ANSWERS" \
    --image-folder "$MMVET_DIR/images"

"$PYTHON" -m llava.eval.convert_mmvet_for_submission \
    --src "$ANSWERS" \
    --dst "$MMVET_DIR/results/$MODEL_NAME.json"
