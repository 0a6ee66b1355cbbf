#!/usr/bin/env bash
# MMBench-CN: the Excel file for the evaluation server.
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/mmbench_cn.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

SPLIT="${SPLIT:-mmbench_dev_cn_20231003}"
MMBENCH_DIR="$EVAL_DIR/mmbench_cn"
RESULT_DIR="$MMBENCH_DIR/answers/$SPLIT"

run_generation llava.eval.model_vqa_mmbench "$MMBENCH_DIR/$SPLIT.tsv" "$RESULT_DIR/$MODEL_NAME" "$RESULT_DIR/$MODEL_NAME.jsonl" \
    --lang cn \
    --single-pred-prompt

"$PYTHON" -m llava.eval.convert_mmbench_for_submission \
    --annotation-file "$MMBENCH_DIR/$SPLIT.tsv" \
    --result-dir "$RESULT_DIR" \
    --upload-dir "$MMBENCH_DIR/answers_upload/$SPLIT" \
    --experiment "$MODEL_NAME"
