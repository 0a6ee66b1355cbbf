# Shared launcher of finetune_*.sh and pretrain.sh (sourced, not run).
#
# The calling script sets its variables, then calls `visatb_finetune "$@"` or `visatb_pretrain "$@"`.
# With GPUs the `deepspeed` launcher runs llava.train.train_mem with ${ZERO_CONFIG} (several nodes through
# DeepSpeed's HOSTFILE); without GPUs (or NUM_GPUS=0) training runs on the CPU: fp32, gloo, no DeepSpeed,
# `python` (or `torchrun` when NUM_PROCS > 1). Across nodes, one model trains on all of them, on GPUs (NCCL,
# DeepSpeed ZeRO-3) or CPUs (gloo, NUM_PROCS processes per node):
#   - inside a Slurm allocation of several nodes (sbatch -N N): one torchrun per node through srun;
#   - elsewhere: NNODES=N NODE_RANK=k MASTER_ADDR=host MASTER_PORT=port, the script started once on each node.
# VISATB_DIST_TIMEOUT (seconds, default 1800) bounds the rendezvous and every collective: a node that dies or
# hangs ends the run with an error naming the rank and node that went silent (llava/train/dist_watch.py).
# The user's own flags come last, so they override any default. DRY_RUN=1 prints the command without running it.
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

# visatb_port_in_use HOST PORT: true when something listens on HOST:PORT (a rendezvous of another job).
visatb_port_in_use() {
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# visatb_rendezvous_port MASTER: prints the rendezvous port. MASTER_PORT when set (refused if taken);
# otherwise 29500 + Slurm job id % 1000, so that jobs sharing a node differ, moved up by 1000 (at most 4 times)
# while something already listens there: two jobs whose ids end alike on the same first node.
visatb_rendezvous_port() {
    local master="$1" port tries
    if [ -n "${MASTER_PORT:-}" ]; then
        if visatb_port_in_use "$master" "$MASTER_PORT"; then
            echo "[visatb] MASTER_PORT=$MASTER_PORT is already in use on $master (another job's rendezvous?):" \
                "choose another port" >&2
            return 1
        fi
        echo "$MASTER_PORT"
        return 0
    fi
    port=$((29500 + ${SLURM_JOB_ID:-0} % 1000))
    for tries in 1 2 3 4 5; do
        if ! visatb_port_in_use "$master" "$port"; then
            echo "$port"
            return 0
        fi
        echo "[visatb] port $port on $master is in use; trying $((port + 1000))" >&2
        port=$((port + 1000))
    done
    echo "[visatb] no free rendezvous port on $master after $tries tries: set MASTER_PORT" >&2
    return 1
}

# visatb_torchrun_flags NNODES NPROC MASTER PORT: the torchrun flags every node passes (besides its rank).
visatb_torchrun_flags() {
    VISATB_TORCHRUN_FLAGS=(--nnodes "$1" --nproc_per_node "$2" --master_addr "$3" --master_port "$4"
        --rdzv_conf "timeout=${VISATB_DIST_TIMEOUT:-1800}")
}

# visatb_slurm_nodes_command NPROC_PER_NODE: sets VISATB_NODES_COMMAND to one torchrun per node of this Slurm
# job, through srun. torchrun learns its node's rank from SLURM_NODEID inside each srun task; the first node of
# the allocation is the rendezvous (MASTER_ADDR) on visatb_rendezvous_port. --kill-on-bad-exit ends every node
# as soon as one fails. DeepSpeed (GPUs) runs inside train_mem.py (--deepspeed), as under the deepspeed launcher.
visatb_slurm_nodes_command() {
    local nproc="$1" nodes="$SLURM_JOB_NUM_NODES" master port
    if [ -n "${MASTER_ADDR:-}" ]; then
        master="$MASTER_ADDR"
    else
        command -v scontrol >/dev/null 2>&1 || { echo "[visatb] scontrol not found: set MASTER_ADDR" >&2; return 1; }
        master="$(scontrol show hostnames "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}" | head -n1)"
    fi
    port="$(visatb_rendezvous_port "$master")" || return 1
    visatb_torchrun_flags "$nodes" "$nproc" "$master" "$port"
    VISATB_NODES_COMMAND=(srun --nodes "$nodes" --ntasks-per-node 1 --kill-on-bad-exit=1)
    [ -z "${SLURM_CPUS_PER_TASK:-}" ] || VISATB_NODES_COMMAND+=(--cpus-per-task "$SLURM_CPUS_PER_TASK")
    [ -z "${SLURM_GPUS_PER_NODE:-}" ] || VISATB_NODES_COMMAND+=(--gpus-per-node "$SLURM_GPUS_PER_NODE")
    # shellcheck disable=SC2016  # $SLURM_NODEID and $@ expand in each srun task, not here
    VISATB_NODES_COMMAND+=(bash -c 'exec torchrun --node_rank "$SLURM_NODEID" "$@"' torchrun
        "${VISATB_TORCHRUN_FLAGS[@]}")
}

# visatb_env_nodes_command NPROC_PER_NODE: the same without Slurm, from NNODES, NODE_RANK, MASTER_ADDR and
# MASTER_PORT (the script runs once on every node; each passes its own NODE_RANK).
visatb_env_nodes_command() {
    local nproc="$1" port variable
    for variable in NODE_RANK MASTER_ADDR MASTER_PORT; do
        if [ -z "${!variable:-}" ]; then
            echo "[visatb] NNODES=$NNODES needs NODE_RANK (0 on the rendezvous node, then 1 .. NNODES-1)," \
                "MASTER_ADDR (the host of node rank 0) and MASTER_PORT (a free port there), the same on every" \
                "node but NODE_RANK; $variable is not set" >&2
            return 1
        fi
    done
    port="$MASTER_PORT"
    if [ "$NODE_RANK" = 0 ] && visatb_port_in_use "$MASTER_ADDR" "$port"; then
        echo "[visatb] MASTER_PORT=$port is already in use on $MASTER_ADDR: choose another port" >&2
        return 1
    fi
    visatb_torchrun_flags "$NNODES" "$nproc" "$MASTER_ADDR" "$port"
    VISATB_NODES_COMMAND=(torchrun --node_rank "$NODE_RANK" "${VISATB_TORCHRUN_FLAGS[@]}")
}

# visatb_nodes NPROC_PER_NODE: sets VISATB_NODES to the node count and, for several, VISATB_NODES_COMMAND.
visatb_nodes() {
    VISATB_NODES=1
    if [ -n "${SLURM_JOB_ID:-}" ] && [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; then
        VISATB_NODES="$SLURM_JOB_NUM_NODES"
        visatb_slurm_nodes_command "$1"
    elif [ -z "${SLURM_JOB_ID:-}" ] && [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; then
        echo "[visatb] SLURM_JOB_NUM_NODES=$SLURM_JOB_NUM_NODES without SLURM_JOB_ID: not inside a Slurm job" >&2
        return 1
    elif [ "${NNODES:-1}" -gt 1 ]; then
        VISATB_NODES="$NNODES"
        visatb_env_nodes_command "$1"
    fi
}

# visatb_run USER_FLAGS... : launch training with VISATB_FLAGS (set by the caller), then USER_FLAGS.
visatb_run() {
    local num_gpus="${NUM_GPUS:-}"
    [ -n "$num_gpus" ] || num_gpus="$(visatb_gpu_count)"
    export PYTHONPATH="${VISATB_ROOT}${PYTHONPATH:+:$PYTHONPATH}"
    local command=() timeout="${VISATB_DIST_TIMEOUT:-1800}"
    local common=(--ddp_timeout "$timeout")
    if [ "$num_gpus" -gt 0 ]; then
        visatb_nodes "$num_gpus" || return 1
        if [ "$VISATB_NODES" -gt 1 ]; then
            command=("${VISATB_NODES_COMMAND[@]}")
        else
            command=(deepspeed)
            if [ -n "${HOSTFILE:-}" ]; then
                command+=(--hostfile "$HOSTFILE")
            else
                command+=(--num_gpus "$num_gpus")
            fi
        fi
        command+=(--module llava.train.train_mem "${VISATB_FLAGS[@]}"
            --deepspeed "${ZERO_CONFIG:-$VISATB_ROOT/scripts_visatb/zero3.json}"
            --bf16 True --tf32 True --dataloader_num_workers "${DATALOADER_WORKERS:-4}" "${common[@]}")
    else
        local procs="${NUM_PROCS:-1}" port
        visatb_nodes "$procs" || return 1
        if [ "$VISATB_NODES" -gt 1 ]; then
            echo "[visatb] no GPU (NUM_GPUS=0): falling back to the CPU with $((VISATB_NODES * procs)) process(es)" \
                "(${procs} per node on ${VISATB_NODES} nodes): fp32, gloo, no DeepSpeed" >&2
            command=("${VISATB_NODES_COMMAND[@]}" --module llava.train.train)
        else
            echo "[visatb] no GPU (NUM_GPUS=0): falling back to the CPU with ${procs} process(es): fp32, no DeepSpeed" >&2
            if [ "$procs" -gt 1 ] && [ -n "${MASTER_PORT:-}" ]; then
                port="$(visatb_rendezvous_port 127.0.0.1)" || return 1
                command=(torchrun --nproc_per_node "$procs" --master_port "$port" --module llava.train.train)
            elif [ "$procs" -gt 1 ]; then
                # One node: torchrun binds a port the system picks, so trainings started side by side (the
                # chain's TRAIN_JOBS) never race for one (a port checked free can be taken before it is bound).
                command=(torchrun --standalone --nproc_per_node "$procs" --module llava.train.train)
            else
                command=(python -m llava.train.train)
            fi
        fi
        command+=("${VISATB_FLAGS[@]}" --bf16 False --tf32 False --fp16 False --dataloader_num_workers 0
            "${common[@]}")
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
