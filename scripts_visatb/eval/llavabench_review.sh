#!/usr/bin/env bash
# LLaVA-Bench (in-the-wild), the review step: the GPT review of the model's answers (written by
# llavabench.sh) against GPT-4's, and its summary, as the release's script of the same name. Reviews are
# appended as they arrive; a rerun asks only for the missing ones.
# Usage: CKPT=<model> [EVAL_DIR=...] [JUDGE_MODEL=...] bash scripts_visatb/eval/llavabench_review.sh   (see _common.sh, README.md)
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

JUDGE_MODEL="${JUDGE_MODEL:-gpt-4-0314}"
BENCH_DIR="$EVAL_DIR/llava-bench-in-the-wild"
ANSWERS="$BENCH_DIR/answers/$MODEL_NAME.jsonl"
REVIEW="$BENCH_DIR/reviews/$MODEL_NAME.jsonl"

require_openai_key
require_file "$BENCH_DIR/questions.jsonl" "$BENCH_DIR/context.jsonl" "$BENCH_DIR/answers_gpt4.jsonl"
require_answers "$ANSWERS" "SKIP_REVIEW=1 llavabench.sh"

"$PYTHON" -m llava.eval.eval_gpt_review_bench \
    --question "$BENCH_DIR/questions.jsonl" \
    --context "$BENCH_DIR/context.jsonl" \
    --answer-list "$BENCH_DIR/answers_gpt4.jsonl" "$ANSWERS" \
    --output "$REVIEW" \
    --judge-model "$JUDGE_MODEL"

"$PYTHON" -m llava.eval.summarize_gpt_review -f "$REVIEW"
