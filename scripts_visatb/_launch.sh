# Shared launcher of finetune_*.sh and pretrain.sh (sourced, not run).
#
# The calling script sets its variables, then calls `visatb_finetune "$@"` or `visatb_pretrain "$@"`.
# With GPUs the `deepspeed` launcher runs llava.train.train_mem with ${ZERO_CONFIG} (multi-node when
# HOSTFILE is set; inside a Slurm job of several nodes: one torchrun per node through srun, see below); without
# GPUs (or NUM_GPUS=0) training falls back to the CPU: fp32, no DeepSpeed,
# `python` (or `torchrun` when NUM_PROCS > 1). The user's own flags come last, so they override any default.
# DRY_RUN=1 prints the command without running it.
#
# Fine-tuning follows the release's VisATB scripts: batches are drawn at random (GROUP_BY_MODALITY_LENGTH=True
# groups image and text-only samples as LLaVA-1.5 does), and a checkpoint is saved at the end of every epoch
# and kept (SAVE_STRATEGY=epoch, SAVE_TOTAL_LIMIT=100; SAVE_STRATEGY=steps SAVE_STEPS=N saves every N steps).

VISATB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

visatb_gpu_count() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

# visatb_slurm_nodes_command NUM_GPUS: sets VISATB_NODES_COMMAND to one torchrun per node of this Slurm job, through srun.
# torchrun learns its node's rank from SLURM_NODEID inside each srun task; the first node of the allocation is
# the rendezvous (MASTER_ADDR), on MASTER_PORT (default 29500 + job id % 1000, so that jobs sharing a node
# differ). DeepSpeed itself runs inside train_mem.py (--deepspeed), as under the deepspeed launcher.
visatb_slurm_nodes_command() {
    local num_gpus="$1" nodes="$SLURM_JOB_NUM_NODES" master port
    if [ -n "${MASTER_ADDR:-}" ]; then
        master="$MASTER_ADDR"
    else
        command -v scontrol >/dev/null 2>&1 || { echo "[visatb] scontrol not found: set MASTER_ADDR" >&2; return 1; }
        master="$(scontrol show hostnames "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}" | head -n1)"
    fi
    port="${MASTER_PORT:-$((29500 + ${SLURM_JOB_ID:-0} % 1000))}"
    VISATB_NODES_COMMAND=(srun --nodes "$nodes" --ntasks-per-node 1 --kill-on-bad-exit=1)
    [ -z "${SLURM_CPUS_PER_TASK:-}" ] || VISATB_NODES_COMMAND+=(--cpus-per-task "$SLURM_CPUS_PER_TASK")
    [ -z "${SLURM_GPUS_PER_NODE:-}" ] || VISATB_NODES_COMMAND+=(--gpus-per-node "$SLURM_GPUS_PER_NODE")
    # shellcheck disable=SC2016  # $SLURM_NODEID and $@ expand in each srun task, not here
    VISATB_NODES_COMMAND+=(bash -c 'exec torchrun --node_rank "$SLURM_NODEID" "$@"' torchrun
        --nnodes "$nodes" --nproc_per_node "$num_gpus" --master_addr "$master" --master_port "$port")
}

# visatb_run USER_FLAGS... : launch training with VISATB_FLAGS (set by the caller), then USER_FLAGS.
visatb_run() {
    local num_gpus="${NUM_GPUS:-}"
    [ -n "$num_gpus" ] || num_gpus="$(visatb_gpu_count)"
    export PYTHONPATH="${VISATB_ROOT}${PYTHONPATH:+:$PYTHONPATH}"
    local command=()
    if [ "$num_gpus" -gt 0 ] && [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; then
        # A Slurm job of several nodes (run_visatb.sh EXECUTOR=slurm SLURM_NODES=train=N, or your own sbatch).
        visatb_slurm_nodes_command "$num_gpus" || return 1
        command=("${VISATB_NODES_COMMAND[@]}" --module llava.train.train_mem "${VISATB_FLAGS[@]}"
            --deepspeed "${ZERO_CONFIG:-$VISATB_ROOT/scripts_visatb/zero3.json}"
            --bf16 True --tf32 True --dataloader_num_workers "${DATALOADER_WORKERS:-4}")
    elif [ "$num_gpus" -gt 0 ]; then
        command=(deepspeed)
        if [ -n "${HOSTFILE:-}" ]; then
            command+=(--hostfile "$HOSTFILE")
        else
            command+=(--num_gpus "$num_gpus")
        fi
        command+=(--module llava.train.train_mem "${VISATB_FLAGS[@]}"
            --deepspeed "${ZERO_CONFIG:-$VISATB_ROOT/scripts_visatb/zero3.json}"
            --bf16 True --tf32 True --dataloader_num_workers "${DATALOADER_WORKERS:-4}")
    else
        if [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; then
            echo "[visatb] this Slurm job has ${SLURM_JOB_NUM_NODES} nodes but no GPU (NUM_GPUS=0): the CPU" \
                "fallback trains on one node only; request 1 node (SLURM_NODES) or GPUs (SLURM_GPUS_PER_NODE)" >&2
            return 1
        fi
        local procs="${NUM_PROCS:-1}"
        echo "[visatb] no GPU (NUM_GPUS=0): falling back to the CPU with ${procs} process(es): fp32, no DeepSpeed" >&2
        if [ "$procs" -gt 1 ]; then
            command=(torchrun --nproc_per_node "$procs" --module llava.train.train)
        else
            command=(python -m llava.train.train)
        fi
        command+=("${VISATB_FLAGS[@]}" --bf16 False --tf32 False --fp16 False --dataloader_num_workers 0)
    fi
    command+=("$@")
    echo "[visatb] ${command[*]}" >&2
    if [ -n "${DRY_RUN:-}" ]; then
        return 0  # DRY_RUN=1: show the command only
    fi
    "${command[@]}"
}

# Task list and weights from TASK_NAMES / TASK_PRESET, VISATB_WEIGHTS / VISATB_WEIGHTS_FILE, WEIGHT_METHOD.
visatb_task_flags() {
    VISATB_FLAGS+=(--weight_method "${WEIGHT_METHOD:-EW}")
    if [ -n "${TASK_NAMES:-}" ]; then
        VISATB_FLAGS+=(--task_names "$TASK_NAMES")
    elif [ -n "${TASK_PRESET:-}" ]; then
        VISATB_FLAGS+=(--task_preset "$TASK_PRESET")
    fi
    if [ -n "${VISATB_WEIGHTS:-}" ]; then
        local weights
        read -r -a weights <<< "$VISATB_WEIGHTS"
        VISATB_FLAGS+=(--visatb_weights "${weights[@]}")
    fi
    if [ -n "${VISATB_WEIGHTS_FILE:-}" ]; then
        VISATB_FLAGS+=(--visatb_weights_file "$VISATB_WEIGHTS_FILE")
    fi
}

# LLaVA-1.5 fine-tuning (the paper's stage) with VisATB task weighting.
visatb_finetune() {
    VISATB_FLAGS=(
        --model_name_or_path "$BASE_MODEL_PATH"
        --version v1
        --data_path "$DATA_PATH"
        --image_folder "$IMAGE_FOLDER"
        --vision_tower "$VISION_TOWER"
        --mm_projector_type mlp2x_gelu
        --mm_vision_select_layer -2
        --mm_use_im_start_end False
        --mm_use_im_patch_token False
        --image_aspect_ratio pad
        --group_by_modality_length "${GROUP_BY_MODALITY_LENGTH:-False}"
        --output_dir "$OUTPUT_DIR"
        --num_train_epochs "$NUM_EPOCHS"
        --per_device_train_batch_size "$PER_DEVICE_BATCH_SIZE"
        --per_device_eval_batch_size 4
        --gradient_accumulation_steps "$GRAD_ACCUM_STEPS"
        --evaluation_strategy no
        --save_strategy "${SAVE_STRATEGY:-epoch}"
        --save_total_limit "${SAVE_TOTAL_LIMIT:-100}"
        --learning_rate "$LEARNING_RATE"
        --weight_decay 0.
        --warmup_ratio 0.03
        --lr_scheduler_type cosine
        --logging_steps 1
        --model_max_length "$MODEL_MAX_LENGTH"
        --gradient_checkpointing True
        --lazy_preprocess True
        --report_to "${REPORT_TO:-none}"
    )
    if [ -n "${SAVE_STEPS:-}" ]; then
        VISATB_FLAGS+=(--save_steps "$SAVE_STEPS")
    fi
    if [ -n "${PRETRAIN_MM_MLP_ADAPTER:-}" ]; then
        VISATB_FLAGS+=(--pretrain_mm_mlp_adapter "$PRETRAIN_MM_MLP_ADAPTER")
    fi
    visatb_task_flags
    visatb_run "$@"
}

# LLaVA-1.5 projector pretraining: only the projector trains; the output is OUTPUT_DIR/mm_projector.bin.
visatb_pretrain() {
    VISATB_FLAGS=(
        --model_name_or_path "$BASE_MODEL_PATH"
        --version plain
        --data_path "$DATA_PATH"
        --image_folder "$IMAGE_FOLDER"
        --vision_tower "$VISION_TOWER"
        --mm_projector_type mlp2x_gelu
        --tune_mm_mlp_adapter True
        --mm_vision_select_layer -2
        --mm_use_im_start_end False
        --mm_use_im_patch_token False
        --output_dir "$OUTPUT_DIR"
        --num_train_epochs "$NUM_EPOCHS"
        --per_device_train_batch_size "$PER_DEVICE_BATCH_SIZE"
        --per_device_eval_batch_size 4
        --gradient_accumulation_steps "$GRAD_ACCUM_STEPS"
        --evaluation_strategy no
        --save_strategy steps
        --save_steps "${SAVE_STEPS:-24000}"
        --save_total_limit "${SAVE_TOTAL_LIMIT:-1}"
        --learning_rate "$LEARNING_RATE"
        --weight_decay 0.
        --warmup_ratio 0.03
        --lr_scheduler_type cosine
        --logging_steps 1
        --model_max_length "$MODEL_MAX_LENGTH"
        --gradient_checkpointing True
        --lazy_preprocess True
        --report_to "${REPORT_TO:-none}"
    )
    if [ -n "${DEFAULT_TASK:-}" ]; then
        VISATB_FLAGS+=(--default_task "$DEFAULT_TASK")
    fi
    visatb_run "$@"
}
