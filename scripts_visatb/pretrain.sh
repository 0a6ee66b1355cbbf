#!/usr/bin/env bash
# LLaVA-1.5 projector pretraining (before fine-tuning): trains only the mlp2x_gelu projector on image-caption
# pairs and writes OUTPUT_DIR/mm_projector.bin, the PRETRAIN_MM_MLP_ADAPTER of the finetune scripts.
# Set any variable in the environment; extra flags go to training and override the defaults.
set -euo pipefail

VISATB_SCRIPTS="$(dirname "${BASH_SOURCE[0]}")"
if [ ! -f "$VISATB_SCRIPTS/_launch.sh" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    # sbatch runs a copy of this script from Slurm's spool folder: the job's command names the original.
    read -r original _ < <(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=//p')
    case "$original" in /*) ;; *) original="${SLURM_SUBMIT_DIR:-.}/$original" ;; esac
    VISATB_SCRIPTS="$(dirname "$original")"
fi

BASE_MODEL_PATH="${BASE_MODEL_PATH:-lmsys/vicuna-7b-v1.5}"
DATA_PATH="${DATA_PATH:-./data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./data/LLaVA-Pretrain/images}"
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-pretrain}"
VISION_TOWER="${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
NUM_GPUS="${NUM_GPUS:-}"                                 # empty: every GPU found; 0: CPU fallback
HOSTFILE="${HOSTFILE:-}"                                 # DeepSpeed hostfile for multi-node runs
ZERO_CONFIG="${ZERO_CONFIG:-$VISATB_SCRIPTS/zero2.json}"
NUM_EPOCHS="${NUM_EPOCHS:-1}"
LEARNING_RATE="${LEARNING_RATE:-1e-3}"
PER_DEVICE_BATCH_SIZE="${PER_DEVICE_BATCH_SIZE:-32}"
GRAD_ACCUM_STEPS="${GRAD_ACCUM_STEPS:-1}"
MODEL_MAX_LENGTH="${MODEL_MAX_LENGTH:-2048}"

source "$VISATB_SCRIPTS/_launch.sh"
visatb_pretrain "$@"
