#!/usr/bin/env bash
# GPU validation (issue 8) in one go: the real training and inference paths on a LLaVA-shaped model with
# random weights (nothing downloaded), with the figures written to one JSON file.
#
# On the CPU machine, first:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .gpu_wheels \
#       transformers==4.31.0 accelerate==0.21.0 huggingface-hub==0.36.2 peft==0.6.2 sentencepiece==0.2.0 \
#       safetensors==0.8.0 hjson py-cpuinfo ninja msgpack einops pydantic pydantic-core annotated-types \
#       typing-inspection psutil
#   pip download --no-deps --no-binary=:all: -d .gpu_wheels deepspeed==0.19.8
# then on the GPU node (carry .gpu_wheels):  bash benchmarks/gpu_check.sh OUT_DIR/gpu_check.json
#
# Stages: 1) tokens/s and peak memory, EW vs VisATB weights and train_mem.py (SDPA) vs train.py (eager),
# under `deepspeed` + ZeRO-3 + bf16 + gradient checkpointing (benchmarks/bench_train_gpu.sh);
# 2) scripts_visatb/finetune_academic.sh's own launcher path with VisATB weights: train, save a checkpoint,
# reload it with load_pretrained_model, resume one step from it, and load it with device_map "auto", {"": "cuda:0"}
# and (with bitsandbytes) 4 bits: the vision tower must follow the model to the GPU in fp16; 3) fp16 batched
# generation at batch 1 vs 16.
set -uo pipefail
RESULT="${1:?usage: bash benchmarks/gpu_check.sh RESULT.json}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${GPU_CHECK_DIR:-/tmp/gpu_check}"
mkdir -p "$WORK" "$(dirname "$RESULT")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
cd "$ROOT"
status() { echo "[gpu_check] $*" >&2; }

status "setup"
bash benchmarks/gpu_setup.sh "${WHEELS:-$ROOT/.gpu_wheels}" || { status "setup failed"; exit 1; }

status "1/3 training throughput"
BENCH_STEPS="${BENCH_STEPS:-8}" bash benchmarks/bench_train_gpu.sh "$WORK/train" || status "training benchmark failed"

status "2/3 finetune_academic.sh: VisATB weights, save, reload, resume"
finetune() {
    BASE_MODEL_PATH="$WORK/train/model/base" DATA_PATH="$WORK/train/model/train.json" \
    IMAGE_FOLDER="$WORK/train/model/images" VISION_TOWER="$WORK/train/model/vision_tower" PRETRAIN_MM_MLP_ADAPTER= \
    VISATB_WEIGHTS="1.05 1.10 0.95 0.98 0.92 0.90 1.35 1.0" OUTPUT_DIR="$WORK/llava-visatb" NUM_GPUS=1 \
    PER_DEVICE_BATCH_SIZE=4 DATALOADER_WORKERS=2 \
        bash scripts_visatb/finetune_academic.sh --save_strategy steps --save_steps 2 --save_total_limit 2 "$@"
}
finetune --max_steps 2 > "$WORK/finetune.log" 2>&1 && finetune_ok=true || finetune_ok=false
finetune --max_steps 3 > "$WORK/resume.log" 2>&1 && resume_ok=true || resume_ok=false
python - "$WORK" "$finetune_ok" "$resume_ok" > "$WORK/finetune.json" <<'PY' || status "reload check failed"
import json, sys, re
from pathlib import Path
work, finetune_ok, resume_ok = Path(sys.argv[1]), sys.argv[2] == "true", sys.argv[3] == "true"
result = {"finetune_ok": finetune_ok, "resume_ok": resume_ok,
          "resumed_from_checkpoint": "checkpoint-2" in (work / "resume.log").read_text()}
try:
    import torch
    from llava.model.builder import load_pretrained_model
    tokenizer, model, processor, _ = load_pretrained_model(str(work / "llava-visatb"), None, "llava-visatb")
    result["reload_ok"] = True
    result["reload_dtype"] = str(next(model.parameters()).dtype)
except Exception as error:  # reported in the figures, not hidden
    result["reload_ok"] = False
    result["reload_error"] = f"{type(error).__name__}: {error}"
# Device-mapped and quantised loads must put the CLIP tower on the model's device and dtype (issue 14, item 8).
for label, kwargs in [("device_map_auto", {"device_map": "auto"}), ("device_map_cuda0", {"device_map": {"": "cuda:0"}}),
                      ("load_4bit", {"load_4bit": True})]:
    try:
        import importlib.util
        if label == "load_4bit" and importlib.util.find_spec("bitsandbytes") is None:
            result[label] = "skipped: no bitsandbytes"
            continue
        _, mapped, _, _ = load_pretrained_model(str(work / "llava-visatb"), None, "llava-visatb", verbose=False, **kwargs)
        tower, projector = mapped.get_vision_tower(), next(mapped.get_model().mm_projector.parameters())
        size = tower.config.image_size
        with torch.no_grad():
            mapped(input_ids=torch.tensor([[1, -200, 5]], device=projector.device),
                   images=torch.zeros(1, 3, size, size, device=tower.device, dtype=tower.dtype))
        result[label] = {"tower": f"{tower.device} {tower.dtype}", "projector": f"{projector.device} {projector.dtype}",
                         "ok": tower.device.type == "cuda" and tower.dtype == torch.float16}
    except Exception as error:
        result[label] = f"failed: {type(error).__name__}: {error}"
print(json.dumps(result))
PY

status "3/3 batched fp16 inference"
python benchmarks/bench_batched_inference.py --llava-shaped --device cuda --max-new-tokens 32 --json \
    > "$WORK/inference.log" 2>&1 || status "inference benchmark failed"

python - "$WORK" "$RESULT" <<'PY'
import datetime, json, sys
from pathlib import Path
import torch
work, result_file = Path(sys.argv[1]), Path(sys.argv[2])
def last_json(path):
    lines = [l for l in path.read_text().splitlines() if l.startswith("{")] if path.exists() else []
    return json.loads(lines[-1]) if lines else None
train = work / "train" / "results.json"
figures = {
    "date": datetime.date.today().isoformat(),
    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    "training": json.loads(train.read_text()) if train.exists() else None,
    "finetune_save_reload_resume": last_json(work / "finetune.json"),
    "batched_inference": last_json(work / "inference.log"),
}
result_file.write_text(json.dumps(figures, indent=2) + "\n")
print(json.dumps(figures, indent=2))
PY
