# shellcheck shell=bash
# Shared set-up of the benchmark scripts (sourced by each <benchmark>.sh, never run on its own).
#
# Environment (all optional):
#   CKPT         model path or hub name                 (default liuhaotian/llava-v1.5-7b); a name that is no
#                path but a folder under ./checkpoints is read as ./checkpoints/NAME, as the release's scripts do
#   MODEL_BASE   base model, for LoRA / projector-only checkpoints
#   CONV_MODE    conversation template                  (default vicuna_v1)
#   EVAL_DIR     benchmark data root, LLaVA's layout    (default ./playground/data/eval)
#   MODEL_NAME   name of the answer/result files        (default: last part of CKPT)
#   PYTHON       interpreter                            (default python)
#   BATCH_SIZE   questions per generation batch        (default: the module's, 8)
#   CUDA_VISIBLE_DEVICES  GPUs to use; otherwise every GPU nvidia-smi lists; none -> one CPU process

set -euo pipefail

VISATB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# `python -m llava...` works from any folder, installed or not.
export PYTHONPATH="$VISATB_ROOT${PYTHONPATH:+:$PYTHONPATH}"

CKPT="${CKPT:-liuhaotian/llava-v1.5-7b}"
if [[ ! -e "$CKPT" && -d "./checkpoints/$CKPT" ]]; then
    echo "[eval] CKPT $CKPT: using ./checkpoints/$CKPT (the release's scripts read CKPT as a name there)"
    CKPT="./checkpoints/$CKPT"
fi
MODEL_BASE="${MODEL_BASE:-}"
CONV_MODE="${CONV_MODE:-vicuna_v1}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"
MODEL_NAME="${MODEL_NAME:-$(basename "${CKPT%/}")}"
PYTHON="${PYTHON:-python}"
BATCH_SIZE="${BATCH_SIZE:-}"

# Fills GPULIST with the visible GPUs (empty on a machine without any).
detect_gpus() {
    GPULIST=()
    local raw=""
    if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
        raw="$CUDA_VISIBLE_DEVICES"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        raw="$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, - || true)"
    fi
    local dev devices=()
    IFS=',' read -ra devices <<< "$raw"
    for dev in "${devices[@]}"; do
        dev="${dev//[[:space:]]/}"
        # CUDA treats -1 (and anything after it) as "no more devices".
        [[ "$dev" == "-1" ]] && break
        [[ -n "$dev" ]] && GPULIST+=("$dev")
    done
    return 0
}

require_file() {
    local path
    for path in "$@"; do
        if [[ ! -e "$path" ]]; then
            echo "error: $path not found; see scripts_visatb/eval/README.md for where the benchmark data goes" >&2
            exit 1
        fi
    done
}

# require_answers FILE SCRIPT: a review step needs the generation step's answers (non-empty) first.
require_answers() {
    if [[ ! -s "$1" ]]; then
        echo "error: $1 not found or empty: run $2 first (same CKPT / MODEL_NAME and EVAL_DIR)" >&2
        exit 1
    fi
}

# The GPT-judged benchmarks check the key before spending time on generation.
require_openai_key() {
    if [[ -z "${OPENAI_API_KEY:-}" ]]; then
        echo "error: OPENAI_API_KEY is not set: the GPT review needs a key for the judge endpoint" \
             "(export OPENAI_API_KEY=..., and OPENAI_BASE_URL=... for a non-OpenAI endpoint)" >&2
        exit 2
    fi
}

_run_on_device() {
    local device="$1"
    shift
    if [[ -n "$device" ]]; then
        CUDA_VISIBLE_DEVICES="$device" "$@"
    else
        "$@"
    fi
}

# run_generation MODULE QUESTION_FILE CHUNK_DIR MERGED_FILE [extra generation args...]
# One generation process per visible GPU (one on CPU), each answering its chunk into
# CHUNK_DIR/<chunks>_<idx>.jsonl; fails if any process fails, then merges in question order.
run_generation() {
    local module="$1" question_file="$2" chunk_dir="$3" merged_file="$4"
    shift 4
    require_file "$question_file"
    detect_gpus
    local chunks=${#GPULIST[@]}
    (( chunks > 0 )) || chunks=1
    local base_args=()
    [[ -n "$MODEL_BASE" ]] && base_args=(--model-base "$MODEL_BASE")
    # Only when set: otherwise the module's own default applies.
    [[ -n "$BATCH_SIZE" ]] && base_args+=(--batch-size "$BATCH_SIZE")
    mkdir -p "$chunk_dir" "$(dirname "$merged_file")"
    echo "[eval] $module: $chunks process(es), model $CKPT, answers in $chunk_dir"

    local pids=() idx device
    for (( idx = 0; idx < chunks; idx++ )); do
        device="${GPULIST[$idx]:-}"
        _run_on_device "$device" "$PYTHON" -m "$module" \
            --model-path "$CKPT" "${base_args[@]}" \
            --question-file "$question_file" \
            --answers-file "$chunk_dir/${chunks}_${idx}.jsonl" \
            --num-chunks "$chunks" \
            --chunk-idx "$idx" \
            --temperature 0 \
            --conv-mode "$CONV_MODE" \
            "$@" &
        pids+=($!)
    done
    local failed=0
    for idx in "${!pids[@]}"; do
        if ! wait "${pids[$idx]}"; then
            echo "error: generation of chunk $idx of $chunks failed (see its output above)" >&2
            failed=1
        fi
    done
    (( failed == 0 )) || exit 1

    "$PYTHON" -m llava.eval.merge_chunks --question-file "$question_file" --answers-dir "$chunk_dir" \
        --num-chunks "$chunks" --output-file "$merged_file"
}
