#!/usr/bin/env bash
# The whole VisATB method as one chain, resumable at every step:
#   subsets -> train the mini and N task-plus-mini models -> answer every validation set -> scores.json
#   -> weights (weights.json, heatmap.png, VISATB_WEIGHTS) -> final VisATB (+ EW baseline) training
#   -> the final models' scores -> report.md
# Every variable below can be set in the environment; extra arguments go to `python -m llava.visatb.chain`
# (e.g. --redo weights). Rerunning skips what finished while everything it was made from (parameters, the hash of
# each input file) is unchanged, and redoes, saying why, what a change reaches; a failed stage names its log
# (WORK_DIR/logs/<stage>/<item>.log). Training goes through FINETUNE_SCRIPT: DeepSpeed on GPU nodes, the CPU
# fallback elsewhere (its own variables, e.g. LEARNING_RATE, NUM_GPUS, pass through the environment).
#   WORK_DIR=work/academic VAL_DIR=data bash scripts_visatb/run_visatb.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The project's environment when none is active (scripts_visatb/setup_env.sh creates it).
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
    source .venv/bin/activate
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# DEFAULT_ALPHA, DEFAULT_TEMPERATURE, ...: llava/visatb/defaults.py, the one source the chain's flags read too.
defaults="$(python -m llava.visatb.defaults --shell)"
eval "$defaults"

# Starting point (the finetune script's BASE_MODEL_PATH, VISION_TOWER, PRETRAIN_MM_MLP_ADAPTER).
BASE_MODEL_PATH="${BASE_MODEL_PATH:-lmsys/vicuna-7b-v1.5}"
VISION_TOWER="${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
PRETRAIN_MM_MLP_ADAPTER="${PRETRAIN_MM_MLP_ADAPTER:-./checkpoints/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5/mm_projector.bin}"
# Optionally score the starting point too (model key `start`): a LLaVA checkpoint and its --model-base.
START_MODEL="${START_MODEL:-}"
START_MODEL_BASE="${START_MODEL_BASE:-}"

# Data: the entire multi-task training file, the image root, and the validation sets, given in ONE way:
# VAL_FILES="GQA=data/GQA_val-1k.json,..."; VAL_DIR (files named {task}_val-{size}.json);
# VAL_MANIFEST (toy_benchmark.json, or a subsets.json with carved sets); or VAL_PER_TASK=K (carve K per task).
DATA_PATH="${DATA_PATH:-./data/Academic_train-475k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./data}"
VAL_FILES="${VAL_FILES:-}"
VAL_DIR="${VAL_DIR:-}"
VAL_MANIFEST="${VAL_MANIFEST:-}"
VAL_PER_TASK="${VAL_PER_TASK:-}"
# Tasks scored by gpt_review (TASK_PRESET=chat: conversation, detail, complex_reasoning) share one review set in
# LLaVA-Bench-COCO's layout instead: REVIEW_SET is a folder with qa90_questions.jsonl,
# caps_boxes_coco2014_val_80.jsonl and qa90_gpt4_answer.jsonl (or questions.jsonl, context.jsonl,
# answers_ref.jsonl; optionally rule.json), or "QUESTIONS,CONTEXT,REFERENCE[,RULES]". A question's category
# decides its task (qa90's conv, detail, complex -> conversation, detail, complex_reasoning). The judge is any
# OpenAI-compatible endpoint: export OPENAI_API_KEY (checked before any training), OPENAI_BASE_URL for a
# non-OpenAI one; JUDGE_MODEL (default gpt-4-0314). Reviews are kept in WORK_DIR/reviews/ and reused on reruns
# while the answer and the judge are unchanged, so a rerun never pays twice.
REVIEW_SET="${REVIEW_SET:-}"
REVIEW_IMAGE_FOLDER="${REVIEW_IMAGE_FOLDER:-}"       # the review set's images (default: images/ beside its questions)
JUDGE_MODEL="${JUDGE_MODEL:-}"
[ -n "$VAL_FILES$VAL_MANIFEST$VAL_PER_TASK$REVIEW_SET" ] || VAL_DIR="${VAL_DIR:-./data}"

# Tasks (task-id order) and the metric of each scored task. TASK_PRESET academic scores ShareGPT4V by
# caption (CIDEr), RefCOCO-caption by caption_list, VQAv2/GQA/ChartQA/OCRVQA by qa (exact match) and
# RefCOCO-bbox by grounding (IoU > 0.5); ShareGPT is trained, not scored (weight 1.0). TASK_PRESET toy takes
# the metrics of the toy manifest. TASK_PRESET chat scores its three tasks by gpt_review on REVIEW_SET (and runs
# FORM=chat unless FORM says otherwise). With TASK_NAMES="A,B,..." give TASK_METRICS="A=qa,B=caption,...".
TASK_PRESET="${TASK_PRESET:-academic}"
TASK_NAMES="${TASK_NAMES:-}"
TASK_METRICS="${TASK_METRICS:-}"
UNSCORED_TASKS="${UNSCORED_TASKS:-}"
# M3IT's setting: balance task groups, "G1=A,B;G2=C,D" (one group-plus-mini model, score and weight per group;
# a group's score is the mean of its tasks' scores, which must share a scale), and "large enough" subsets:
# each task-plus-mini set takes a share LARGE_FRACTION of its task(s) (M3IT: 0.25), the minis drawn from it.
TASK_GROUPS="${TASK_GROUPS:-}"
LARGE_FRACTION="${LARGE_FRACTION:-1}"

# Training and inference.
FINETUNE_SCRIPT="${FINETUNE_SCRIPT:-scripts_visatb/finetune_academic.sh}"
WORK_DIR="${WORK_DIR:-./work/visatb-${TASK_PRESET:-custom}}"
RUN_NAME="${RUN_NAME:-visatb}"                       # checkpoints: WORK_DIR/checkpoints/llava-RUN_NAME-<model>
MINI_FRACTION="${MINI_FRACTION:-$DEFAULT_MINI_FRACTION}"  # share of every task in the mini set (the paper's)
SEED="${SEED:-0}"
TRAIN_ARGS="${TRAIN_ARGS:-}"                         # extra finetune flags for every run
PREP_TRAIN_ARGS="${PREP_TRAIN_ARGS:-}"               # ... for the mini and task-plus-mini runs only
FINAL_TRAIN_ARGS="${FINAL_TRAIN_ARGS:-}"             # ... for the final VisATB / EW runs only
INFER_ARGS="${INFER_ARGS:-}"                         # extra inference_visatb.py flags, e.g. "--batch-size 16"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-}"                 # per metric type or task, e.g. "qa=16,caption=1024"
CONV_MODE="${CONV_MODE:-vicuna_v1}"
TEMPERATURE="${TEMPERATURE:-$DEFAULT_TEMPERATURE}"   # or auto: the smallest of 2 1 0.5 0.25 0.125 keeping weights in [0.5, 2]
ALPHA="${ALPHA:-$DEFAULT_ALPHA}"                     # a_out a_in a_D of the final weight (Eq. 8), summing to 1
FORM="${FORM:-}"                                     # academic | chat: C from start and alone:<task> models (App. C);
                                                     # empty: chat for TASK_PRESET=chat, academic otherwise
DIFFICULTY_FROM="${DIFFICULTY_FROM:-}"               # real | precise (App. F); empty: real for academic, precise for chat
# FORM=chat and DIFFICULTY_FROM=precise read alone:<task> / mini-alone:<task> (and start) rows of
# WORK_DIR/scores.json; the chain trains and scores those models (start: only with START_MODEL).
GAIN_TOLERANCE="${GAIN_TOLERANCE:-$DEFAULT_GAIN_TOLERANCE}"  # own-data gain at most this share of the score: "no gain" (neutral weight)
MAX_CONTRIBUTION="${MAX_CONTRIBUTION:-$DEFAULT_MAX_CONTRIBUTION}"  # ... or so small that some |C[i->j]| exceeds this
STRICT="${STRICT:-0}"                                # 1: a task without own-data gain stops the chain instead
STRICT_REUSE="${STRICT_REUSE:-0}"                    # 1: stop when a finished item's inputs changed, instead of redoing it
EW_BASELINE="${EW_BASELINE:-1}"                      # 1: also train plain LLaVA (equal weights) for comparison
METHODS="${METHODS:-}"                               # final models, any of $METHOD_KEYS (default: VisATB,EW)
STL="${STL:-0}"                                      # 1: also train each task alone (STL) -> comparison.json (dI, dE)
ABLATIONS="${ABLATIONS:-}"                           # Table 8's rows: any of "alpha temperature difficulty"
EVAL_FINAL="${EVAL_FINAL:-1}"                        # 1: score the final model(s) on every validation set
JOBS="${JOBS:-1}"                                    # inference / metric commands at the same time
TRAIN_JOBS="${TRAIN_JOBS:-1}"                        # training runs at the same time (CPU only)

# Where the items run. EXECUTOR=local: here, as subprocesses (JOBS / TRAIN_JOBS at a time). EXECUTOR=slurm:
# every training, inference and metric item is an sbatch job (its script in WORK_DIR/slurm/<stage>/); a
# stage's items are all submitted once the stage before has finished, and the chain waits on them through
# squeue (a rerun waits on jobs still in flight and resubmits only what did not finish). Each SLURM_* value
# is VALUE for every stage, STAGE=VALUE pairs, or both: "1,train=8" (STAGE: train, infer, score = both
# stages of that kind, or one stage: subsets, final-train, ...). Note: inside a Slurm allocation, Slurm
# itself sets SLURM_GPUS_PER_NODE; set it explicitly when you start the chain from within a job.
EXECUTOR="${EXECUTOR:-local}"
SLURM_PARTITION="${SLURM_PARTITION:-}"               # e.g. "cpu,train=gpu" (default: the cluster's default)
SLURM_NODES="${SLURM_NODES:-}"                       # nodes per job, e.g. "train=8" (more than 1: training only)
SLURM_GPUS_PER_NODE="${SLURM_GPUS_PER_NODE:-}"       # e.g. "train=8,infer=1,score=0" (default 0)
SLURM_CPUS="${SLURM_CPUS:-}"                         # CPUs per job (its OMP_NUM_THREADS without GPUs; default: nproc / JOBS, at most a node's CPUs)
SLURM_TIME="${SLURM_TIME:-}"                         # time limit per job, e.g. "2:00:00,train=1-00:00:00"
SLURM_ARGS="${SLURM_ARGS:-}"                         # more sbatch flags for every job, e.g. "--account=x --mem=64G"
SLURM_TRAIN_ARGS="${SLURM_TRAIN_ARGS:-}"             # ... for training jobs only, e.g. "--exclusive"

args=(--work-dir "$WORK_DIR" --data "$DATA_PATH" --image-folder "$IMAGE_FOLDER"
      --finetune-script "$FINETUNE_SCRIPT" --run-name "$RUN_NAME" --mini-fraction "$MINI_FRACTION" --seed "$SEED"
      --conv-mode "$CONV_MODE" --temperature "$TEMPERATURE" --gain-tolerance "$GAIN_TOLERANCE"
      --max-contribution "$MAX_CONTRIBUTION" --strict "$STRICT" --strict-reuse "$STRICT_REUSE" --ew-baseline "$EW_BASELINE" --eval-final "$EVAL_FINAL"
      --stl "$STL" --jobs "$JOBS" --train-jobs "$TRAIN_JOBS" --large-fraction "$LARGE_FRACTION")
[ -z "$METHODS" ] || args+=(--methods "$METHODS")
[ -z "$ABLATIONS" ] || args+=(--ablations "$ABLATIONS")
if [ -n "$TASK_NAMES" ]; then args+=(--tasks "$TASK_NAMES"); else args+=(--task-preset "$TASK_PRESET"); fi
[ -z "$TASK_METRICS" ] || args+=(--task-metrics "$TASK_METRICS")
[ -z "$UNSCORED_TASKS" ] || args+=(--unscored-tasks "$UNSCORED_TASKS")
[ -z "$TASK_GROUPS" ] || args+=(--task-groups "$TASK_GROUPS")
read -r -a alpha <<< "$ALPHA"
[ "${#alpha[@]}" -eq 0 ] || args+=(--alpha "${alpha[@]}")
[ -z "$DIFFICULTY_FROM" ] || args+=(--difficulty-from "$DIFFICULTY_FROM")
[ -z "$FORM" ] || args+=(--form "$FORM")
[ -z "$REVIEW_SET" ] || args+=(--review-set "$REVIEW_SET")
[ -z "$REVIEW_IMAGE_FOLDER" ] || args+=(--review-image-folder "$REVIEW_IMAGE_FOLDER")
[ -z "$JUDGE_MODEL" ] || args+=(--judge-model "$JUDGE_MODEL")
[ -z "$VAL_FILES" ] || args+=(--val-files "$VAL_FILES")
[ -z "$VAL_DIR" ] || args+=(--val-dir "$VAL_DIR")
[ -z "$VAL_MANIFEST" ] || args+=(--val-manifest "$VAL_MANIFEST")
[ -z "$VAL_PER_TASK" ] || args+=(--val-per-task "$VAL_PER_TASK")
[ -z "$BASE_MODEL_PATH" ] || args+=(--base-model "$BASE_MODEL_PATH")
[ -z "$VISION_TOWER" ] || args+=(--vision-tower "$VISION_TOWER")
[ -z "$PRETRAIN_MM_MLP_ADAPTER" ] || args+=(--projector "$PRETRAIN_MM_MLP_ADAPTER")
[ -z "$START_MODEL" ] || args+=(--start-model "$START_MODEL")
[ -z "$START_MODEL_BASE" ] || args+=(--start-model-base "$START_MODEL_BASE")
[ -z "$TRAIN_ARGS" ] || args+=(--train-args "$TRAIN_ARGS")
[ -z "$PREP_TRAIN_ARGS" ] || args+=(--prep-train-args "$PREP_TRAIN_ARGS")
[ -z "$FINAL_TRAIN_ARGS" ] || args+=(--final-train-args "$FINAL_TRAIN_ARGS")
[ -z "$INFER_ARGS" ] || args+=(--infer-args "$INFER_ARGS")
[ -z "$MAX_NEW_TOKENS" ] || args+=(--max-new-tokens "$MAX_NEW_TOKENS")
args+=(--executor "$EXECUTOR")
if [ "$EXECUTOR" = "slurm" ]; then
    [ -z "$SLURM_PARTITION" ] || args+=(--slurm-partition "$SLURM_PARTITION")
    [ -z "$SLURM_NODES" ] || args+=(--slurm-nodes "$SLURM_NODES")
    [ -z "$SLURM_GPUS_PER_NODE" ] || args+=(--slurm-gpus-per-node "$SLURM_GPUS_PER_NODE")
    [ -z "$SLURM_CPUS" ] || args+=(--slurm-cpus "$SLURM_CPUS")
    [ -z "$SLURM_TIME" ] || args+=(--slurm-time "$SLURM_TIME")
    [ -z "$SLURM_ARGS" ] || args+=(--slurm-args "$SLURM_ARGS")
    [ -z "$SLURM_TRAIN_ARGS" ] || args+=(--slurm-train-args "$SLURM_TRAIN_ARGS")
fi

# `--status`: every item of WORK_DIR, its Slurm job id and state (and the driver's job), then stop.
# SUBMIT=1 (EXECUTOR=slurm): submit the chain's driver itself as a small Slurm job and return; log out, check on
# it with `--status`, and submit again after a failed item or a cancelled driver to continue where it stopped.
if [ "${1:-}" = "--status" ]; then
    exec python -m llava.visatb.chain.driver status --work-dir "$WORK_DIR"
fi
if [ "${SUBMIT:-}" = 1 ]; then
    [ "$EXECUTOR" = "slurm" ] || { echo "error: SUBMIT=1 needs EXECUTOR=slurm" >&2; exit 2; }
    exec python -m llava.visatb.chain.driver submit --driver-args "${DRIVER_ARGS:-}" "${args[@]}" "$@"
fi
exec python -m llava.visatb.chain "${args[@]}" "$@"
