"""`load_pretrained_model`: load a LLaVA checkpoint (full, LoRA + base, or projector + base) or a plain LM.

Which path is taken follows upstream LLaVA, which decides by the checkpoint's *name*:
- a name containing "llava" (or a config with model_type "llava") is multimodal;
  - with "lora" in the name and a `model_base`: base weights + `non_lora_trainables.bin` + LoRA adapter,
    merged;
  - with a `model_base` otherwise: base weights + the projector in `mm_projector.bin`;
  - with no `model_base`: a full checkpoint;
- any other name is a plain language model (with a LoRA adapter merged in when `model_base` is given).
The path taken is printed.
"""

from __future__ import annotations

import json
import os
import warnings

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_PATCH_TOKEN,
    NON_LORA_NAME,
)
from llava.model.attention import apply_attention, requested_attention
from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.llava_arch import load_projector_into, load_projector_weights


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


CLIP_MODEL_TYPES = ("clip_vision_model", "clip", "siglip_vision_model", "siglip")


def _check_checkpoint(path: str, what: str) -> None:
    """A local folder must hold a config.json of a model transformers can build; the message says what it is."""
    if not os.path.isdir(path):
        return
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{what} folder {path} has no config.json: is this a complete checkpoint?")
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} folder {path}: {config_file} is not readable JSON ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"{what} folder {path}: {config_file} holds a {type(config).__name__}, not a JSON object")
    model_type = config.get("model_type")
    if model_type in CLIP_MODEL_TYPES:
        raise ValueError(
            f"{what} folder {path} is a vision tower ({config_file} says model_type {model_type!r}), not a LLaVA "
            "checkpoint: give it as --vision_tower when training (a trained checkpoint records it as "
            "mm_vision_tower), and a LLaVA checkpoint folder as the model"
        )
    from transformers import CONFIG_MAPPING

    if not model_type:
        raise ValueError(
            f"{what} folder {path}: {config_file} has no model_type, so it is no Hugging Face model config "
            "(a LLaVA-1.5 checkpoint says model_type 'llava')"
        )
    if model_type != "llava" and model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"{what} folder {path}: {config_file} says model_type {model_type!r}, which this transformers does "
            "not know (a LLaVA-1.5 checkpoint says 'llava', its base language model 'llama')"
        )
    if model_type == "llava":
        lacking = [key for key in ("hidden_size", "num_hidden_layers", "vocab_size") if key not in config]
        if lacking:
            raise ValueError(
                f"{what} folder {path}: {config_file} says model_type 'llava' but lacks {', '.join(lacking)}: "
                "it is no complete LLaVA config"
            )


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.model", "tokenizer.json")


def _check_tokenizer(path: str) -> None:
    """The folder the tokenizer loads from must hold one (without, transformers fails with a KeyError)."""
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{path} has no tokenizer ({', '.join(TOKENIZER_FILES)}): a full LLaVA checkpoint saves its "
            "tokenizer beside config.json; a LoRA or projector-only checkpoint loads with --model-base"
        )


def _prepare_config(config, model_path: str, overwrite_config: dict | None) -> None:
    """Apply `overwrite_config` (field: value) and resolve the vision tower's path."""
    for key, value in (overwrite_config or {}).items():
        setattr(config, key, value)
    _resolve_vision_tower(config, model_path)


def _is_multimodal(model_path: str, model_name: str) -> tuple[bool, str]:
    if "llava" in model_name.lower():
        return True, f"name {model_name!r} contains 'llava'"
    config_file = os.path.join(model_path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            if json.load(f).get("model_type") == "llava":
                return True, f"{config_file} says model_type 'llava'"
    return False, f"name {model_name!r} does not contain 'llava'"


def _looks_like_hub_name(name: str) -> bool:
    """What `build_vision_tower` accepts besides a local folder: an `openai/...`/`laion/...` or CLIP hub name."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or ".." in name:
        return False
    return name.startswith(("openai", "laion")) or "clip" in name.lower()


def _resolve_vision_tower(config, model_path: str) -> None:
    """Let a checkpoint refer to its vision tower by a path relative to the checkpoint folder.

    A tower that is neither a folder (as given, or relative to the checkpoint) nor a hub name is an error that
    says the path came from the checkpoint's config.json.
    """
    tower = getattr(config, "mm_vision_tower", None)
    if tower and not os.path.isabs(tower) and not os.path.exists(tower):
        candidate = os.path.join(model_path, tower)
        if os.path.isdir(candidate):
            config.mm_vision_tower = candidate
            return
    if tower and not os.path.exists(tower) and not _looks_like_hub_name(tower):
        raise FileNotFoundError(
            f"{os.path.join(model_path, 'config.json')} names mm_vision_tower {tower!r}, which is not a folder "
            f"(neither relative to the current directory {os.getcwd()} nor relative to the checkpoint) nor a hub "
            "name: put the CLIP tower there, or set mm_vision_tower in that config.json to its absolute path"
        )


def _quantization_kwargs(load_8bit: bool, load_4bit: bool, device: str) -> dict:
    if not (load_8bit or load_4bit):
        return {}
    if not device.startswith("cuda"):
        raise ValueError("8-bit / 4-bit loading needs a CUDA device (bitsandbytes)")
    from transformers import BitsAndBytesConfig

    if load_8bit:
        return {"load_in_8bit": True, "device_map": {"": device}}
    return {
        "device_map": {"": device},
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=torch.float16,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
        ),
    }


ADAPTER_WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")


def _hub_file(repo_id: str, filename: str) -> str | None:
    """`filename` of hub repository `repo_id` (downloaded, or from the cache offline); None if it has none."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=repo_id, filename=filename)
    except (OSError, ValueError):  # not a repo id, not on the hub, or offline and not cached
        return None


def lora_checkpoint_folder(model_path: str) -> str:
    """A LoRA LLaVA checkpoint as a local folder: `model_path` itself, or its hub snapshot in the cache.

    A hub id is fetched with huggingface_hub as upstream fetches `non_lora_trainables.bin`; the config and
    adapter files are fetched too, so the adapter loads from the same snapshot (also offline, from the cache).
    """
    if os.path.isdir(model_path):
        if not os.path.isfile(os.path.join(model_path, NON_LORA_NAME)):
            raise FileNotFoundError(
                f"{os.path.join(model_path, NON_LORA_NAME)} is missing: a LoRA LLaVA checkpoint stores its projector there"
            )
        return model_path
    non_lora = _hub_file(model_path, NON_LORA_NAME)
    if non_lora is None:
        raise FileNotFoundError(
            f"{model_path} is neither a local folder nor a hub repository whose {NON_LORA_NAME} can be fetched "
            "(a LoRA LLaVA checkpoint stores its projector there; offline, it must be in the hub cache)"
        )
    for required in ("config.json", "adapter_config.json"):
        if _hub_file(model_path, required) is None:
            raise FileNotFoundError(f"hub repository {model_path} has no {required} (or it is not in the cache)")
    if not any(_hub_file(model_path, name) for name in ADAPTER_WEIGHT_NAMES):
        raise FileNotFoundError(f"hub repository {model_path} has no {' or '.join(ADAPTER_WEIGHT_NAMES)}")
    return os.path.dirname(non_lora)  # files of one revision share its snapshot folder


def _load_non_lora_trainables(model_path: str) -> dict[str, torch.Tensor]:
    path = os.path.join(model_path, NON_LORA_NAME)
    state = torch.load(path, map_location="cpu", weights_only=True)
    cleaned = {}
    for key, value in state.items():
        for prefix in ("base_model.model.", "base_model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        cleaned[key] = value
    return cleaned


def place_vision_tower(model, dtype: torch.dtype) -> None:
    """Move the (loaded) vision tower to the device of the projector that consumes its features, in `dtype`.

    `from_pretrained` with a `device_map` (or 8-/4-bit loading) places the language model and projector but
    not the tower, which `load_model()` builds afterwards on the CPU; upstream moves it to the model's device
    and dtype, and so does this.
    """
    # The projector's first tensor (an identity projector has none: then the token embeddings').
    anchor = next(model.get_model().mm_projector.parameters(), model.get_input_embeddings().weight)
    model.get_vision_tower().to(device=anchor.device, dtype=dtype)


# Keyword arguments of `from_pretrained` that pass through unchanged (callers such as LLaVA's own scripts and
# the harnesses' adapters give them); anything else is refused by name rather than reaching a constructor.
PASSTHROUGH_LOAD_KWARGS = (
    "cache_dir", "revision", "local_files_only", "token", "use_auth_token", "max_memory", "offload_folder",
    "offload_state_dict", "low_cpu_mem_usage",
)
# Accepted for compatibility and ignored: the checkpoint's own code is this package's.
IGNORED_LOAD_KWARGS = ("trust_remote_code",)


def _torch_dtype(value, device: str) -> torch.dtype:
    """`torch_dtype` as a dtype: None or "auto" is fp16 on CUDA and fp32 elsewhere; names such as "bfloat16"."""
    if value is None or value == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).replace("torch.", ""), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"torch_dtype {value!r} is not a torch dtype (use float32, float16 or bfloat16)")
    return dtype


def _device_of_map(device_map, device: str | None) -> str:
    """The device to load on when only a `device_map` names one ("cpu", "cuda:0", {"": "cuda:1"})."""
    if device is not None:
        return device
    if isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        return device_map
    if isinstance(device_map, dict) and len(set(map(str, device_map.values()))) == 1:
        only = str(next(iter(device_map.values())))
        return f"cuda:{only}" if only.isdigit() else only
    return default_device()


def load_pretrained_model(
    model_path: str,
    model_base: str | None,
    model_name: str,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | dict | None = None,
    device: str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    verbose: bool = True,
    use_flash_attn: bool = False,
    attn_implementation: str | None = None,
    multimodal: bool = False,
    overwrite_config: dict | None = None,
    **kwargs,
):
    """Load tokenizer, model, image processor and context length, as upstream LLaVA's builder does.

    CUDA loads in fp16 (unless `torch_dtype` says otherwise), CPU in fp32. The keyword arguments of upstream's
    later builders and of the evaluation harnesses are accepted: `use_flash_attn` / `use_flash_attention_2` /
    `attn_implementation` ("eager", "sdpa"; "flash_attention_2" on CUDA only, see `llava.model.attention`),
    `multimodal=True` (a LLaVA checkpoint whatever its name), `overwrite_config` (config fields to set),
    `device_map`, `torch_dtype` (a dtype or its name, "auto"), and `from_pretrained`'s own cache/revision
    arguments. Any other keyword is a ValueError naming it.
    """
    use_flash_attention_2 = kwargs.pop("use_flash_attention_2", False)
    customized_config = kwargs.pop("customized_config", None)
    if customized_config is not None:
        raise ValueError(
            "customized_config (a LLaVA-NeXT builder option) is not supported for LLaVA-1.5 checkpoints: "
            "pass overwrite_config={field: value} to change config fields"
        )
    for name in IGNORED_LOAD_KWARGS:
        kwargs.pop(name, None)
    unknown = sorted(set(kwargs) - set(PASSTHROUGH_LOAD_KWARGS))
    if unknown:
        raise ValueError(
            f"load_pretrained_model got unknown keyword argument(s) {', '.join(unknown)}; besides its named "
            f"parameters it accepts {', '.join(PASSTHROUGH_LOAD_KWARGS + IGNORED_LOAD_KWARGS)}, "
            "use_flash_attention_2 and customized_config=None"
        )
    device = _device_of_map(device_map, device)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"the model is to load on {device!r} (device={device!r}, device_map={device_map!r}) but torch sees no "
            "CUDA device: pass device='cpu' (lmms-eval's llava class: device_map=auto,device=cpu)"
        )
    torch_dtype = _torch_dtype(torch_dtype, device)
    apply_attention(requested_attention(attn_implementation, use_flash_attn, use_flash_attention_2), device)
    load_kwargs = {"torch_dtype": torch_dtype, "low_cpu_mem_usage": True, **kwargs}
    load_kwargs.update(_quantization_kwargs(load_8bit, load_4bit, device))
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    _check_checkpoint(model_path, "model")
    if model_base is not None:
        _check_checkpoint(model_base, "base model")
    _check_tokenizer(model_base if model_base is not None else model_path)

    def say(message: str) -> None:
        if verbose:
            print(f"[load_pretrained_model] {message}", flush=True)

    if multimodal:
        is_llava, reason = True, "multimodal=True"
    else:
        is_llava, reason = _is_multimodal(model_path, model_name)
    multimodal = is_llava
    is_lora = "lora" in model_name.lower()
    if multimodal:
        if is_lora and model_base is None:
            warnings.warn(
                f"{model_name!r} looks like a LoRA checkpoint (its name contains 'lora') but no model_base "
                "was given; loading it as a full checkpoint. Pass --model-base to merge it into its base.",
                stacklevel=2,
            )
        if is_lora and model_base is not None:
            say(f"LLaVA LoRA checkpoint ({reason}, 'lora' in name): base {model_base} + adapter {model_path}")
            from peft import PeftModel

            model_path = lora_checkpoint_folder(model_path)

            config = LlavaConfig.from_pretrained(model_path)
            _prepare_config(config, model_path, overwrite_config)
            tokenizer = AutoTokenizer.from_pretrained(model_base, use_fast=False)
            model = LlavaLlamaForCausalLM.from_pretrained(model_base, config=config, **load_kwargs)
            non_lora = _load_non_lora_trainables(model_path)
            if any(k.startswith("model.model.") for k in non_lora):
                non_lora = {k[len("model."):] if k.startswith("model.model.") else k: v for k, v in non_lora.items()}
            missing = model.load_state_dict(non_lora, strict=False)
            if missing.unexpected_keys:
                raise ValueError(f"non_lora_trainables.bin has unknown tensors: {missing.unexpected_keys[:5]}")
            model = PeftModel.from_pretrained(model, model_path)
            model = model.merge_and_unload()
        elif model_base is not None:
            say(f"LLaVA projector checkpoint ({reason}, with model_base): base {model_base} + {model_path}")
            config = AutoConfig.from_pretrained(model_path)
            _prepare_config(config, model_path, overwrite_config)
            tokenizer = AutoTokenizer.from_pretrained(model_base, use_fast=False)
            model = LlavaLlamaForCausalLM.from_pretrained(model_base, config=config, **load_kwargs)
            projector_file = os.path.join(model_path, "mm_projector.bin")
            weights = {k: v.to(torch_dtype) for k, v in load_projector_weights(projector_file).items()}
            load_projector_into(model.get_model().mm_projector, weights, projector_file)
        else:
            say(f"full LLaVA checkpoint ({reason}, no model_base): {model_path}")
            config = AutoConfig.from_pretrained(model_path)
            _prepare_config(config, model_path, overwrite_config)
            tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=False)
            model = LlavaLlamaForCausalLM.from_pretrained(model_path, config=config, **load_kwargs)
    else:
        if model_base is not None:
            say(f"language model with LoRA adapter ({reason}): base {model_base} + adapter {model_path}")
            from peft import PeftModel

            tokenizer = AutoTokenizer.from_pretrained(model_base, use_fast=False)
            model = AutoModelForCausalLM.from_pretrained(model_base, **load_kwargs)
            model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
        else:
            say(f"plain language model ({reason}): {model_path}")
            tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=False)
            model = AutoModelForCausalLM.from_pretrained(model_path, **load_kwargs)

    image_processor = None
    if multimodal:
        if getattr(model.config, "mm_use_im_patch_token", True):
            tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
        if getattr(model.config, "mm_use_im_start_end", False):
            tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        vision_tower = model.get_vision_tower()
        if vision_tower is None:
            raise ValueError(f"{model_path}: the config names no vision tower (mm_vision_tower)")
        vision_tower.load_model()
        place_vision_tower(model, torch_dtype)
        image_processor = vision_tower.image_processor

    if "device_map" not in load_kwargs:
        model.to(device)
    model.eval()
    context_len = getattr(model.config, "max_sequence_length", 2048)
    return tokenizer, model, image_processor, context_len
