#!/usr/bin/env bash
# Put the project's pinned stack on a lent GPU node (Python 3.12, torch with CUDA preinstalled, no network).
# Wheels are downloaded on the CPU machine beforehand (see benchmarks/gpu_check.sh) and carried in WHEELS.
set -euo pipefail
WHEELS="${1:-.gpu_wheels}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pip() { python -m pip "$@"; }

pip uninstall -y -q transformers tokenizers >/dev/null 2>&1 || true
pip install -q --no-deps "$WHEELS"/transformers-4.31.0-*.whl "$WHEELS"/accelerate-0.21.0-*.whl \
    "$WHEELS"/huggingface_hub-0.36.2-*.whl "$WHEELS"/peft-0.6.2-*.whl "$WHEELS"/sentencepiece-0.2.0-*.whl
# Helpers of DeepSpeed and peft: install a carried wheel only where the node lacks the module.
for pair in safetensors:safetensors hjson:hjson cpuinfo:py_cpuinfo ninja:ninja msgpack:msgpack einops:einops \
            pydantic:pydantic pydantic_core:pydantic_core annotated_types:annotated_types \
            typing_inspection:typing_inspection psutil:psutil; do
    module="${pair%%:*}"; wheel="${pair##*:}"
    python -c "import $module" 2>/dev/null || pip install -q --no-deps "$WHEELS"/"$wheel"-*.whl
done
python -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 pip install -q --no-deps --no-build-isolation \
    "$WHEELS"/deepspeed-0.19.8.tar.gz
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY'
import importlib.util
import deepspeed, peft, sentencepiece, torch, transformers
if importlib.util.find_spec("tokenizers") is None:
    # transformers 4.31 then reads tokenizer_config.json's AddedToken entries as plain strings, so LLaMA
    # prompts tokenize differently (</s> split into bytes) and training masks every sample as a mismatch.
    print("[gpu_setup] WARNING: no `tokenizers` package (tokenizers 0.13 has no Python 3.12 wheel): "
          "LLaMA tokenization differs from the pinned set; timings hold, losses do not")
print(f"[gpu_setup] torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"peft {peft.__version__}, deepspeed {deepspeed.__version__}, sentencepiece {sentencepiece.__version__}, "
      f"GPU {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
PY
