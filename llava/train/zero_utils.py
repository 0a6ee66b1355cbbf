"""Collect parameters for saving, also under DeepSpeed ZeRO-3 where every rank holds only a shard of each tensor.

Every function that may gather is a collective under ZeRO-3: call it on all ranks, in the same order, and
write files from the main process only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import torch

logger = logging.getLogger(__name__)

NamedParameters = Iterable[tuple[str, torch.Tensor]]


def is_zero3_param(param: torch.Tensor) -> bool:
    """True for a parameter partitioned by DeepSpeed ZeRO-3 (its local data is an empty shard)."""
    return hasattr(param, "ds_id")


def maybe_zero_3(param: torch.Tensor, ignore_status: bool = False, name: str | None = None) -> torch.Tensor:
    """A full CPU copy of one parameter; a ZeRO-3 parameter is gathered from all ranks first."""
    if not is_zero3_param(param):
        return param.detach().cpu().clone()
    from deepspeed import zero
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    if not ignore_status and param.ds_status != ZeroParamStatus.NOT_AVAILABLE:
        logger.warning("%s: ZeRO-3 parameter is %s while being saved", name or "parameter", param.ds_status)
    with zero.GatheredParameters([param]):
        return param.data.detach().cpu().clone()


def gather_to_cpu(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full CPU copies of several parameters, gathering all ZeRO-3 ones in a single collective."""
    partitioned = [p for p in named.values() if is_zero3_param(p)]
    if not partitioned:
        return {k: v.detach().cpu().clone() for k, v in named.items()}
    from deepspeed import zero

    with zero.GatheredParameters(partitioned):
        return {k: v.data.detach().cpu().clone() for k, v in named.items()}


def get_peft_state_maybe_zero_3(named_params: NamedParameters, bias: str) -> dict[str, torch.Tensor]:
    """The LoRA tensors (and biases, per `bias`: none, all or lora_only) as full CPU tensors."""
    named = dict(named_params)
    if bias == "none":
        selected = {k: t for k, t in named.items() if "lora_" in k}
    elif bias == "all":
        selected = {k: t for k, t in named.items() if "lora_" in k or "bias" in k}
    elif bias == "lora_only":
        selected = {k: t for k, t in named.items() if "lora_" in k}
        # The bias of each module that carries LoRA weights, e.g. `...q_proj.bias` for `...q_proj.lora_A...`.
        lora_biases = {k.split("lora_")[0] + "bias" for k in selected}
        selected.update({k: t for k, t in named.items() if k in lora_biases})
    else:
        raise ValueError(f"unknown LoRA bias mode {bias!r}; use none, all or lora_only")
    return gather_to_cpu(selected)


def get_peft_state_non_lora_maybe_zero_3(
    named_params: NamedParameters, require_grad_only: bool = True
) -> dict[str, torch.Tensor]:
    """The non-LoRA tensors (by default only the trainable ones, e.g. the projector) as full CPU tensors."""
    selected = {k: t for k, t in named_params if "lora_" not in k and (t.requires_grad or not require_grad_only)}
    return gather_to_cpu(selected)


def get_mm_adapter_state_maybe_zero_3(
    named_params: NamedParameters, keys_to_match: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Tensors whose name contains any of `keys_to_match` (e.g. `mm_projector`) as full CPU tensors."""
    selected = {k: t for k, t in named_params if any(key in k for key in keys_to_match)}
    return gather_to_cpu(selected)


def fill_zero_auto_buckets(hf_deepspeed_config, hidden_size: int) -> dict[str, int]:
    """Resolve the hidden-size-based "auto" ZeRO buckets to integers; returns what was filled.

    transformers 4.31 fills stage3_prefetch_bucket_size with 0.9 * hidden^2, a float (e.g. 15099494.4 for a
    7B LLaMA), which DeepSpeed >= 0.15 rejects as not an integer. Filled first, the Trainer leaves them be.
    """
    if hf_deepspeed_config is None:
        return {}
    zero = hf_deepspeed_config.config.get("zero_optimization", {})
    values = {
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }
    filled = {key: value for key, value in values.items() if zero.get(key) == "auto"}
    zero.update(filled)
    return filled


def cast_new_trainables(model: torch.nn.Module, dtype: torch.dtype) -> list[str]:
    """Cast trainable fp32 parameters that ZeRO-3 has not partitioned (new modules: projector, LoRA) to `dtype`.

    The language model is loaded in bf16, but modules built afterwards start in fp32, and DeepSpeed flattens
    each parameter group into one buffer of a single dtype. Returns the names of the cast parameters.
    """
    cast = []
    for name, param in model.named_parameters():
        if param.requires_grad and param.dtype == torch.float32 and not is_zero3_param(param):
            param.data = param.data.to(dtype)
            cast.append(name)
    return cast


def projector_keys(use_im_start_end: bool) -> list[str]:
    """What pretraining trains and saves: the projector, plus the input embeddings of new image tokens."""
    return ["mm_projector", "embed_tokens", "embed_in"] if use_im_start_end else ["mm_projector"]


def save_projector(model: torch.nn.Module, output_dir: str, use_im_start_end: bool, should_save: bool) -> None:
    """Write `mm_projector.bin` and the model config to `output_dir` (gathers on every rank)."""
    weights = get_mm_adapter_state_maybe_zero_3(model.named_parameters(), projector_keys(use_im_start_end))
    if should_save:
        os.makedirs(output_dir, exist_ok=True)
        model.config.save_pretrained(output_dir)
        torch.save(weights, os.path.join(output_dir, "mm_projector.bin"))


def safe_save_model_for_hf_trainer(trainer, output_dir: str) -> None:
    """Save the trained model: only the projector in pretraining mode, else the full weights (ZeRO-3-safe)."""
    args = trainer.args
    if getattr(args, "tune_mm_mlp_adapter", False):
        save_projector(trainer.model, output_dir, getattr(args, "use_im_start_end", False), args.should_save)
        return
    if trainer.deepspeed:
        # DeepSpeed gathers the 16-bit weights (stage3_gather_16bit_weights_on_model_save in zero3.json).
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        trainer.save_model(output_dir)
        return
    state_dict = trainer.model.state_dict()
    if args.should_save:
        cpu_state_dict = {key: value.cpu() for key, value in state_dict.items()}
        del state_dict
        trainer._save(output_dir, state_dict=cpu_state_dict)
