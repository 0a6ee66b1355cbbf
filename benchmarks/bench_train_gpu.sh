#!/usr/bin/env bash
# LLaVA-shaped training throughput on one GPU under the real `deepspeed` launcher with ZeRO-3 and bf16:
# a ~1B-parameter LLaMA and a CLIP ViT-L/14-336-shaped tower (random weights, nothing downloaded), the
# Academic task preset, 576 image tokens + ~400 text tokens per sample. Three runs, the same steps each:
#   ew_sdpa      train_mem.py (SDPA attention), EW
#   visatb_sdpa  train_mem.py (SDPA attention), EW + 8 VisATB weights
#   ew_eager     train.py (eager attention), EW
# Usage: bash benchmarks/bench_train_gpu.sh [WORK_DIR]; writes WORK_DIR/results.json and prints a table.
# BENCH_RUNS picks runs; BENCH_STEPS, BENCH_BATCH, BENCH_LAYERS, BENCH_HIDDEN size them.
set -uo pipefail

WORK="${1:-${BENCH_DIR:-./outputs/bench_train_gpu}}"
STEPS="${BENCH_STEPS:-8}"
BATCH="${BENCH_BATCH:-8}"
LAYERS="${BENCH_LAYERS:-16}"
HIDDEN="${BENCH_HIDDEN:-2048}"
RUN_TIMEOUT="${BENCH_RUN_TIMEOUT:-240}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${ROOT}${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$WORK"

if [ ! -f "$WORK/model/train.json" ]; then
    python "$ROOT/benchmarks/bench_train_gpu.py" prepare --out "$WORK/model" --layers "$LAYERS" --hidden "$HIDDEN" \
        || { echo "[bench] preparing the model failed" >&2; exit 1; }
fi

COMMON=(
    --model_name_or_path "$WORK/model/base" --version v1
    --data_path "$WORK/model/train.json" --image_folder "$WORK/model/images"
    --vision_tower "$WORK/model/vision_tower" --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2
    --mm_use_im_start_end False --mm_use_im_patch_token False --image_aspect_ratio pad
    --group_by_modality_length True --task_preset academic
    --deepspeed "$ROOT/scripts_visatb/zero3.json" --bf16 True --tf32 True
    --per_device_train_batch_size "$BATCH" --gradient_accumulation_steps 1 --max_steps "$STEPS"
    --learning_rate 2e-5 --lr_scheduler_type cosine --warmup_ratio 0.03 --weight_decay 0.
    --logging_steps 1 --model_max_length 2048 --gradient_checkpointing True --lazy_preprocess True
    --dataloader_num_workers 4 --save_strategy no --report_to none --disable_tqdm True
)

bench_run() {
    local name="$1" attn="$2"
    shift 2
    echo "[bench] run $name" >&2
    timeout "$RUN_TIMEOUT" deepspeed --num_gpus 1 --no_local_rank "$ROOT/benchmarks/bench_train_gpu.py" run \
        --result "$WORK/$name.json" --attn "$attn" -- "${COMMON[@]}" --output_dir "$WORK/out_$name" "$@" \
        > "$WORK/$name.log" 2>&1 || { echo "[bench] run $name failed; tail of $WORK/$name.log:" >&2; tail -25 "$WORK/$name.log" >&2; }
    rm -rf "$WORK/out_$name"
}

for name in ${BENCH_RUNS:-ew_sdpa visatb_sdpa ew_eager}; do
    case "$name" in
        ew_sdpa) bench_run ew_sdpa sdpa --weight_method EW ;;
        visatb_sdpa) bench_run visatb_sdpa sdpa --weight_method EW --visatb_weights 1.05 1.10 0.95 0.98 0.92 0.90 1.35 1.0 ;;
        ew_eager) bench_run ew_eager eager --weight_method EW ;;
        *) echo "[bench] unknown run $name (ew_sdpa, visatb_sdpa, ew_eager)" >&2 ;;
    esac
done

python - "$WORK" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
results = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json")) if p.stem != "results"}
(work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
for name, r in results.items():
    print(f"{name:<12} {r['gpu']}: {r['tokens_per_second']:9.0f} tokens/s  {r['seconds_per_step']:.3f} s/step  "
          f"{r['tokens_per_step']:7.0f} tokens/step  peak {r['peak_memory_gib']:.1f} GiB")
if {"ew_sdpa", "visatb_sdpa"} <= results.keys():
    print(f"VisATB / EW tokens/s: {results['visatb_sdpa']['tokens_per_second'] / results['ew_sdpa']['tokens_per_second']:.3f}")
if {"ew_sdpa", "ew_eager"} <= results.keys():
    print(f"train_mem (SDPA) / train (eager) tokens/s: "
          f"{results['ew_sdpa']['tokens_per_second'] / results['ew_eager']['tokens_per_second']:.3f}")
PY
