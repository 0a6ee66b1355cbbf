#!/usr/bin/env bash
# LLaVA-Bench (in-the-wild): GPT-judged review against GPT-4 answers, and its summary.
# Usage: CKPT=<model> [MODEL_BASE=...] [EVAL_DIR=...] bash scripts_visatb/eval/llavabench.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

JUDGE_MODEL="${JUDGE_MODEL:-gpt-4-0314}"
BENCH_DIR="$EVAL_DIR/llava-bench-in-the-wild"
ANSWERS="$BENCH_DIR/answers/$MODEL_NAME.jsonl"
REVIEW="$BENCH_DIR/reviews/$MODEL_NAME.jsonl"

require_openai_key
require_file "$BENCH_DIR/context.jsonl" "$BENCH_DIR/answers_gpt4.jsonl"
run_generation llava.eval.model_vqa "$BENCH_DIR/questions.jsonl" "$BENCH_DIR/answers/$MODEL_NAME" "$ANSWERS" \
    --image-folder "$BENCH_DIR/images"

"$PYTHON" -m llava.eval.eval_gpt_review_bench \
    --question "$BENCH_DIR/questions.jsonl" \
    --context "$BENCH_DIR/context.jsonl" \
    --answer-list "$BENCH_DIR/answers_gpt4.jsonl" "$ANSWERS" \
    --output "$REVIEW" \
    --judge-model "$JUDGE_MODEL"

"$PYTHON" -m llava.eval.summarize_gpt_review -f "$REVIEW"
