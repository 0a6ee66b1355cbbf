"""What a local model folder is, told from its files before anything loads it: training starts from a full model.

A projector-only checkpoint, a LoRA adapter or a vision tower given as the base model would otherwise fail deep
inside `from_pretrained` (a raw OSError naming pytorch_model.bin) after minutes of loading, or worse, load.
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.safetensors", "model.safetensors.index.json")
VISION_MODEL_TYPES = ("clip_vision_model", "clip", "siglip_vision_model", "siglip")


def base_model_problem(path: str | Path, flag: str) -> str | None:
    """Why the local folder `path` cannot be a base model to train from (None: it can, or it is a hub name)."""
    folder = Path(path)
    if not folder.exists():
        return None  # a hub name (the loader says so when it cannot be had)
    if not folder.is_dir():
        return f"{flag} {path} is a file; give the folder of a Hugging Face model (config.json and weights)"
    names = {p.name for p in folder.iterdir()}
    if "adapter_config.json" in names and not names & set(WEIGHT_FILES):
        return (f"{flag} {path} is a LoRA adapter, not a full model: merge it into its base first "
                "(python scripts_visatb/merge_lora_weights.py --model-path ADAPTER --model-base BASE --save-model-path OUT)")  # fmt: skip
    if "config.json" not in names:
        if "mm_projector.bin" in names:
            return (f"{flag} {path} holds only a projector (mm_projector.bin), as LLaVA's pretraining stage writes: "
                    "give it as PRETRAIN_MM_MLP_ADAPTER (--pretrain_mm_mlp_adapter) and the language model "
                    "(e.g. lmsys/vicuna-7b-v1.5) as the base model")  # fmt: skip
        return f"{flag} {path} has no config.json: it is not a Hugging Face model folder"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"{flag} {path}: config.json is not readable JSON ({e})"
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type in VISION_MODEL_TYPES:
        return (f"{flag} {path} is a vision tower (model_type {model_type!r}): give it as VISION_TOWER "
                "(--vision_tower) and a language model as the base model")  # fmt: skip
    if not names & set(WEIGHT_FILES):
        what = "only a projector (mm_projector.bin) beside its config" if "mm_projector.bin" in names else "no weights"
        return (f"{flag} {path} holds {what}: a base model needs {' or '.join(WEIGHT_FILES[::2])} "
                "(a projector-only checkpoint goes to PRETRAIN_MM_MLP_ADAPTER / --pretrain_mm_mlp_adapter)")  # fmt: skip
    return None
