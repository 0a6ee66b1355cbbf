#!/usr/bin/env bash
# TextVQA val (prompts with OCR tokens): VQA soft accuracy.
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/textvqa.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

TEXTVQA_DIR="$EVAL_DIR/textvqa"
ANSWERS="$TEXTVQA_DIR/answers/$MODEL_NAME.jsonl"

run_generation llava.eval.model_vqa_loader "$TEXTVQA_DIR/llava_textvqa_val_v051_ocr.jsonl" \
    "$TEXTVQA_DIR/answers/$MODEL_NAME" "$ANSWERS" \
    --image-folder "$TEXTVQA_DIR/train_images"

"$PYTHON" -m llava.eval.eval_textvqa \
    --annotation-file "$TEXTVQA_DIR/TextVQA_0.5.1_val.json" \
    --result-file "$ANSWERS"
