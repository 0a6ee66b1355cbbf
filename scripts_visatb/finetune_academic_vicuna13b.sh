#!/usr/bin/env bash
# Fine-tune LLaVA-1.5-13B on the Academic benchmark (8 tasks) with a task weighting method; the defaults are
# the release's (the paper's set-up). Set any variable in the environment; extra flags go to training and
# override the defaults:
#   VISATB_WEIGHTS_FILE=outputs/weights.json OUTPUT_DIR=checkpoints/visatb bash scripts_visatb/finetune_academic_vicuna13b.sh
set -euo pipefail

VISATB_SCRIPTS="$(dirname "${BASH_SOURCE[0]}")"
if [ ! -f "$VISATB_SCRIPTS/_launch.sh" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    # sbatch runs a copy of this script from Slurm's spool folder: the job's command names the original.
    read -r original _ < <(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=//p')
    case "$original" in /*) ;; *) original="${SLURM_SUBMIT_DIR:-.}/$original" ;; esac
    VISATB_SCRIPTS="$(dirname "$original")"
fi

BASE_MODEL_PATH="${BASE_MODEL_PATH:-lmsys/vicuna-13b-v1.5}"
DATA_PATH="${DATA_PATH:-./data/Academic_train-475k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./data}"
WEIGHT_METHOD="${WEIGHT_METHOD:-EW}"                     # EW, EWTB (TLA), RLW, DWA, IGB
VISATB_WEIGHTS="${VISATB_WEIGHTS:-}"                     # "w1 ... w8" in TASK_PRESET order (VisATB)
VISATB_WEIGHTS_FILE="${VISATB_WEIGHTS_FILE:-}"           # or the JSON written by weighting_visatb.py
TASK_PRESET="${TASK_PRESET:-academic}"
TASK_NAMES="${TASK_NAMES:-}"                             # A,B,... instead of the preset
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/visatb-academic-vicuna-13b-${WEIGHT_METHOD}}"
VISION_TOWER="${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
PRETRAIN_MM_MLP_ADAPTER="${PRETRAIN_MM_MLP_ADAPTER-./checkpoints/llava-v1.5-mlp2x-336px-pretrain-vicuna-13b-v1.5/mm_projector.bin}"  # set it empty to start the projector from scratch
NUM_GPUS="${NUM_GPUS:-}"                                 # empty: every GPU found; 0: CPU fallback
HOSTFILE="${HOSTFILE:-}"                                 # DeepSpeed hostfile for multi-node runs
ZERO_CONFIG="${ZERO_CONFIG:-$VISATB_SCRIPTS/zero3.json}"
NUM_EPOCHS="${NUM_EPOCHS:-1}"
LEARNING_RATE="${LEARNING_RATE:-2e-5}"
PER_DEVICE_BATCH_SIZE="${PER_DEVICE_BATCH_SIZE:-16}"
GRAD_ACCUM_STEPS="${GRAD_ACCUM_STEPS:-1}"
MODEL_MAX_LENGTH="${MODEL_MAX_LENGTH:-2048}"
GROUP_BY_MODALITY_LENGTH="${GROUP_BY_MODALITY_LENGTH:-False}"  # False: random batches, as the release; True: LLaVA-1.5's grouping
SAVE_STRATEGY="${SAVE_STRATEGY:-epoch}"                  # a checkpoint every epoch, as the release (steps: every SAVE_STEPS)
SAVE_TOTAL_LIMIT="${SAVE_TOTAL_LIMIT:-100}"              # checkpoints kept (the release keeps up to 100)

source "$VISATB_SCRIPTS/_launch.sh"
visatb_finetune "$@"
