#!/usr/bin/env bash
# The whole VisATB method, for real, on the built-in toy benchmark, on a CPU, in one command:
#   bash scripts_visatb/demo.sh                 # about 5 minutes on 2 CPU cores that are not otherwise busy
# It sets up .venv if needed, generates the toy benchmark (5 tasks: detailed caption, region caption list,
# a cell-number VQA task, grounding, text-only), builds the tiny starting checkpoint, then runs
# scripts_visatb/run_visatb.sh: sub-datasets, the mini and 4 task-plus-mini models, inference, metrics,
# contribution heatmap and weights, the final VisATB model and an EW baseline. Everything lands in
# OUTPUT_DIR: scores.json, weights.json, heatmap.png, answers/, report.md (printed at the end).
# Rerunning reuses every finished stage. DEMO_REDUCED=1 leaves out the EW baseline.
# The chain's own variables pass through, e.g. M3IT's setting on the toy (task groups, large subsets):
#   TASK_GROUPS="Describe=ToyCaption,ToyCaptionList;Locate=ToyCellQA,ToyBBox" LARGE_FRACTION=0.5 bash scripts_visatb/demo.sh
# EXECUTOR=slurm runs the chain's items as Slurm jobs (the run_visatb.sh SLURM_* variables pass through; on this
# machine scripts_visatb/local_slurm.sh starts a one-node cluster); the toy benchmark and model build here.
# SEED changes the benchmark, the starting checkpoint and every training; bash scripts_visatb/demo_seeds.sh
# measures how much the results move with it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUTPUT_DIR="${OUTPUT_DIR:-outputs/demo}"
SEED="${SEED:-0}"
DEMO_REDUCED="${DEMO_REDUCED:-0}"
# The same data, starting point and models either way: with less data or a shorter pretraining the mini
# model writes no right box and the learning checks fail (docs/toy-benchmark-history.md), so the
# reduced version only drops the EW baseline, whose training is a sixth of the run on a machine where it does
# not share the final stage with VisATB's (test.sh, OMP_NUM_THREADS=1, runs both side by side).
DEMO_SCALE="${DEMO_SCALE:-1.0}"                      # records per task relative to the full toy benchmark
DEMO_PRETRAIN_STEPS="${DEMO_PRETRAIN_STEPS:-1500}"
DEMO_EPOCHS="${DEMO_EPOCHS:-1}"
if [ "$DEMO_REDUCED" = "1" ]; then
    DEMO_EW_BASELINE="${DEMO_EW_BASELINE:-0}"
else
    DEMO_EW_BASELINE="${DEMO_EW_BASELINE:-1}"
fi
DEMO_UNSCORED="${DEMO_UNSCORED:-ToyText}"            # trained, not scored (weight 1.0), as Academic's ShareGPT
DEMO_MINI_FRACTION="${DEMO_MINI_FRACTION:-0.08333333333333333}"  # 1/12 of each task (the paper: 1/32 of far bigger tasks)
DEMO_IMAGE_SIZE="${DEMO_IMAGE_SIZE:-48}"
DEMO_JOBS="${DEMO_JOBS:-2}"                          # commands at the same time (training, inference, metrics)
DEMO_TOY_MODEL="${DEMO_TOY_MODEL:-}"                 # a finished toy_model folder to reuse instead of building one

start_time=$(date +%s)
# VISATB_SETUP=skip uses the python already on PATH (an activated environment) instead of .venv.
if [ "${VISATB_SETUP:-auto}" != "skip" ]; then
    source scripts_visatb/setup_env.sh
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUTPUT_DIR"

echo "[demo] 1/3 toy benchmark -> $OUTPUT_DIR/data"
python -m llava.visatb.toy.benchmark --output-dir "$OUTPUT_DIR/data" --seed "$SEED" --scale "$DEMO_SCALE" \
    --image-size "$DEMO_IMAGE_SIZE" --quiet
TOY_MODEL="$OUTPUT_DIR/toy_model"
if [ -n "$DEMO_TOY_MODEL" ]; then
    # Another run's starting checkpoint, used as it is (read only): e.g. a configuration probe on a smaller
    # benchmark of the same seed, without building a starting point of its own.
    TOY_MODEL="$DEMO_TOY_MODEL"
    echo "[demo] 2/3 tiny starting checkpoint: reusing $TOY_MODEL (DEMO_TOY_MODEL)"
    python - "$TOY_MODEL" "$OUTPUT_DIR/data" <<'PY'
import sys
from llava.visatb.toy.benchmark import load_toy_manifest
from llava.visatb.toy.model import load_toy_model
model, bench = load_toy_model(sys.argv[1]), load_toy_manifest(sys.argv[2])
if model["settings"]["image_size"] != bench["image_size"]:
    sys.exit(f"error: DEMO_TOY_MODEL {sys.argv[1]} was built for {model['settings']['image_size']}-pixel images, "
             f"the benchmark in {sys.argv[2]} has {bench['image_size']}")
PY
else
    echo "[demo] 2/3 tiny starting checkpoint (tokenizer, CLIP-style tower, LLaMA, pretrained projector) -> $TOY_MODEL"
    python -m llava.visatb.toy.model --benchmark "$OUTPUT_DIR/data" --output-dir "$TOY_MODEL" \
        --seed "$SEED" --pretrain-steps "$DEMO_PRETRAIN_STEPS"
fi
train_file="$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["train_file"])' "$OUTPUT_DIR/data/toy_benchmark.json")"

echo "[demo] 3/3 the VisATB chain (scripts_visatb/run_visatb.sh) -> $OUTPUT_DIR"
# The finetune script's own variables: CPU fp32, a tiny-model learning rate, no checkpoints in between. The
# projector stays frozen: at the learning rate a tiny model needs, fine-tuning it washes out the alignment
# pretraining. Batches of 4: twice the optimizer steps of batches of 8 for the same data, which the mini model
# (some 300 steps) needs to write fluent captions on every seed rather than on some; its scores then move far
# less from seed to seed (docs/toy-benchmark-history.md has the measurements).
export NUM_GPUS="${NUM_GPUS:-0}" LEARNING_RATE="${LEARNING_RATE:-2e-3}" PER_DEVICE_BATCH_SIZE="${PER_DEVICE_BATCH_SIZE:-4}"
export MODEL_MAX_LENGTH="${MODEL_MAX_LENGTH:-256}"
# LLaVA-1.5's modality-grouped batches, the setting of the demo's published seed spread; the finetune
# scripts themselves draw batches at random, as the release's VisATB scripts do.
export GROUP_BY_MODALITY_LENGTH="${GROUP_BY_MODALITY_LENGTH:-True}"
WORK_DIR="$OUTPUT_DIR" RUN_NAME=toy TASK_PRESET=toy TASK_NAMES="" TASK_METRICS="" UNSCORED_TASKS="$DEMO_UNSCORED" \
DATA_PATH="$OUTPUT_DIR/data/$train_file" IMAGE_FOLDER="$OUTPUT_DIR/data" \
VAL_MANIFEST="$OUTPUT_DIR/data/toy_benchmark.json" VAL_FILES="" VAL_DIR="" VAL_PER_TASK="" \
BASE_MODEL_PATH="$TOY_MODEL/base" VISION_TOWER="$TOY_MODEL/vision_tower" \
PRETRAIN_MM_MLP_ADAPTER="$TOY_MODEL/projector/mm_projector.bin" \
START_MODEL="$TOY_MODEL/llava-toy-start" START_MODEL_BASE="$TOY_MODEL/base" \
FINETUNE_SCRIPT=scripts_visatb/finetune_academic.sh MINI_FRACTION="$DEMO_MINI_FRACTION" SEED="$SEED" \
TRAIN_ARGS="--num_train_epochs $DEMO_EPOCHS --freeze_mm_mlp_adapter True --gradient_checkpointing False --save_strategy no --logging_steps 10 --disable_tqdm True --seed $SEED" \
PREP_TRAIN_ARGS="" FINAL_TRAIN_ARGS="" \
INFER_ARGS="--batch-size 64 --quiet" MAX_NEW_TOKENS="caption=48,caption_list=16,qa=6,grounding=24" \
JOBS="$DEMO_JOBS" TRAIN_JOBS="$DEMO_JOBS" EW_BASELINE="$DEMO_EW_BASELINE" EVAL_FINAL=1 EXECUTOR="${EXECUTOR:-local}" \
    bash scripts_visatb/run_visatb.sh "$@"

echo "[demo] finished in $(( $(date +%s) - start_time )) s; in $OUTPUT_DIR: report.md, scores.json, weights.json, heatmap.png, answers/"
