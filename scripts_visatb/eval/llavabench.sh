#!/usr/bin/env bash
# LLaVA-Bench (in-the-wild): the model's answers, then (unless SKIP_REVIEW=1) the GPT review against GPT-4
# answers and its summary (llavabench_review.sh). The release's llavabench.sh only generates: SKIP_REVIEW=1
# does that, and llavabench_review.sh is its second step. Extra arguments go to llava.eval.model_vqa.
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/llavabench.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

BENCH_DIR="$EVAL_DIR/llava-bench-in-the-wild"
ANSWERS="$BENCH_DIR/answers/$MODEL_NAME.jsonl"
SKIP_REVIEW="${SKIP_REVIEW:-}"

if [[ -z "$SKIP_REVIEW" ]]; then
    require_openai_key
    require_file "$BENCH_DIR/context.jsonl" "$BENCH_DIR/answers_gpt4.jsonl"
fi
run_generation llava.eval.model_vqa "$BENCH_DIR/questions.jsonl" "$BENCH_DIR/answers/$MODEL_NAME" "$ANSWERS" \
    --image-folder "$BENCH_DIR/images" "$@"

if [[ -z "$SKIP_REVIEW" ]]; then
    bash "$(dirname "${BASH_SOURCE[0]}")/llavabench_review.sh"
fi
