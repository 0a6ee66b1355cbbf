"""Export a full LLaVA-1.5 checkpoint to Hugging Face's `LlavaForConditionalGeneration` format.

    python -m llava.model.convert_to_hf --model-path checkpoints/visatb-academic-vicuna-7b --output-dir hf/visatb-7b

The folder written loads in a current transformers (5.x) with `LlavaForConditionalGeneration` and
`AutoProcessor`, and so in lmms-eval's `llava_hf` class; see docs/ecosystem.md. It holds:
- config.json: model_type llava, text_config from the checkpoint, vision_config from its `mm_vision_tower`
  folder, the image token's id, the selected vision layer and feature strategy;
- model.safetensors: the language model and projector renamed to transformers 5.x's layout, plus the CLIP
  tower's weights (LLaVA-1.5 checkpoints do not hold them); one extra embedding row for `<image>`, whose
  output row is the mean of the others, so its logit is the mean logit and never changes a greedy choice;
- the tokenizer with `<image>` added (sentencepiece `legacy` behaviour kept, as LLaVA tokenised), a chat
  template that renders the checkpoint's conversation template for string and list-of-parts content;
- preprocessor_config.json (LlavaImageProcessor; `do_pad` for `image_aspect_ratio: pad` checkpoints) and
  processor_config.json (as many image tokens as the tower has patches).

Everything is written with json and safetensors: no newer transformers is needed to export. LoRA and
projector-only folders are refused (merge first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import SeparatorStyle, get_conv_template

MERGE_HINT = (
    "merge it into its base first: python scripts_visatb/merge_lora_weights.py --model-path LORA "
    "--model-base BASE --save-model-path MERGED, then export MERGED"
)
TEXT_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "rope_theta", "rope_scaling", "attention_bias", "pretraining_tp", "bos_token_id", "eos_token_id",
    "pad_token_id", "tie_word_embeddings",
)  # fmt: skip
DROPPED_CONFIG_KEYS = ("architectures", "transformers_version", "_name_or_path", "torch_dtype")


class ExportError(ValueError):
    """A checkpoint that cannot be exported, with the reason and what to do."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {path}: {e}") from e


def _weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files (sharded or not), safetensors preferred."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):  # fmt: skip
        if (folder / index_name).is_file():
            shards = sorted(set(_read_json(folder / index_name).get("weight_map", {}).values()))
            return [folder / shard for shard in shards]
        if (folder / single).is_file():
            return [folder / single]
    return []


def _load_state(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            state.update(load_file(str(file)))
        else:
            state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state


def check_exportable(model_path: Path) -> dict:
    """The checkpoint's config, or an ExportError saying why the folder cannot be exported."""
    if not model_path.is_dir():
        raise ExportError(f"{model_path} is not a folder: give a local full LLaVA checkpoint")
    if (model_path / "adapter_config.json").is_file() or (model_path / "non_lora_trainables.bin").is_file():
        raise ExportError(f"{model_path} is a LoRA checkpoint (adapter weights only): {MERGE_HINT}")
    if not (model_path / "config.json").is_file():
        raise ExportError(f"{model_path} has no config.json: it is not a checkpoint folder")
    config = _read_json(model_path / "config.json")
    if not _weight_files(model_path):
        if (model_path / "mm_projector.bin").is_file():
            raise ExportError(
                f"{model_path} holds only a projector (mm_projector.bin, from pretraining): export the full "
                "checkpoint finetuned from it, or load it with its base model (--model-base)"
            )
        raise ExportError(f"{model_path} has no model weights (model.safetensors or pytorch_model.bin)")
    if config.get("model_type") != "llava" or not config.get("mm_vision_tower"):
        raise ExportError(
            f"{model_path}/config.json is no LLaVA config (model_type {config.get('model_type')!r}, "
            f"mm_vision_tower {config.get('mm_vision_tower')!r})"
        )
    projector = config.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise ExportError(
            f"{model_path} has projector {projector!r}; Hugging Face's LlavaForConditionalGeneration has the "
            "two-layer GELU projector of LLaVA-1.5 (mlp2x_gelu) only"
        )
    if config.get("mm_use_im_start_end"):
        raise ExportError(f"{model_path} wraps images in <im_start>/<im_end> tokens, which the llava format lacks")
    return config


def _tower_folder(config: dict, model_path: Path) -> Path:
    from llava.model.builder import _resolve_vision_tower

    holder = types.SimpleNamespace(mm_vision_tower=config["mm_vision_tower"])
    _resolve_vision_tower(holder, str(model_path))
    tower = holder.mm_vision_tower
    if os.path.isdir(tower):
        return Path(tower)
    from huggingface_hub import snapshot_download

    try:  # a hub name: its snapshot in the local cache (nothing is downloaded here)
        return Path(snapshot_download(tower, local_files_only=True))
    except Exception as e:  # noqa: BLE001 (huggingface_hub raises several kinds for "not in the cache")
        raise ExportError(
            f"vision tower {tower!r} (mm_vision_tower of {model_path}/config.json) is neither a folder nor in the "
            f"hub cache: {e}"
        ) from e


def rename_language_and_projector(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our checkpoint's keys in transformers 5.x's LlavaForConditionalGeneration layout (tower keys dropped)."""
    renamed = {}
    for key, value in state.items():
        if key.endswith("rotary_emb.inv_freq") or key.startswith("model.vision_tower."):
            continue
        if key.startswith("model.mm_projector."):
            index, rest = key[len("model.mm_projector."):].split(".", 1)
            layer = {"0": "linear_1", "2": "linear_2"}.get(index)
            if layer is None:
                raise ExportError(f"unexpected projector tensor {key}")
            renamed[f"model.multi_modal_projector.{layer}.{rest}"] = value
        elif key.startswith("model."):
            renamed["model.language_model." + key[len("model."):]] = value
        elif key == "lm_head.weight":
            renamed[key] = value
        else:
            raise ExportError(f"unexpected tensor {key} in the checkpoint")
    return renamed


def rename_tower(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPVisionModel's keys (`vision_model.*`) under `model.vision_tower.*`, without position_ids buffers."""
    renamed = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if not key.startswith("vision_model."):
            raise ExportError(f"unexpected tensor {key} in the vision tower")
        renamed["model.vision_tower." + key[len("vision_model."):]] = value
    return renamed


def _text_part_jinja() -> str:
    # A message's content: a string as it is; a list of parts as LLaVA writes a turn: each image as
    # "<image>\n", text parts trimmed (LLaVA strips the question).
    return (
        "{%- macro render(content) -%}"
        "{%- if content is string -%}{{ content }}"
        "{%- else -%}{%- for part in content -%}"
        "{%- if part['type'] == 'image' -%}{{ '" + DEFAULT_IMAGE_TOKEN + "\\n' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
    )


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Jinja string literal


def chat_template(conv_mode: str) -> str:
    """A Jinja chat template that renders messages as `llava.conversation` template `conv_mode` does."""
    conv = get_conv_template(conv_mode)
    if conv.sep_style not in (SeparatorStyle.TWO, SeparatorStyle.SINGLE):
        raise ExportError(
            f"conversation template {conv_mode!r} ({conv.sep_style.name}) has no chat-template export; "
            "LLaVA-1.5 checkpoints use v1 (vicuna_v1) or v0"
        )
    user, assistant = conv.roles
    after_user = conv.sep
    after_assistant = conv.sep2 if conv.sep_style == SeparatorStyle.TWO else conv.sep
    return (
        _text_part_jinja()
        + "{%- if messages and messages[0]['role'] == 'system' -%}"
        + "{%- set system = render(messages[0]['content']) -%}{%- set turns = messages[1:] -%}"
        + "{%- else -%}{%- set system = " + _quote(conv.system) + " -%}{%- set turns = messages -%}{%- endif -%}"
        + "{{ system }}{{ " + _quote(conv.sep) + " }}"
        + "{%- for message in turns -%}"
        + "{%- if message['role'] == 'user' -%}"
        + "{{ " + _quote(user + ": ") + " }}{{ render(message['content']) }}{{ " + _quote(after_user) + " }}"
        + "{%- else -%}"
        + "{{ " + _quote(assistant + ": ") + " }}{{ render(message['content']) }}"
        + "{{ " + _quote(after_assistant) + " }}"
        + "{%- endif -%}{%- endfor -%}"
        + "{%- if add_generation_prompt -%}{{ " + _quote(assistant + ":") + " }}{%- endif -%}"
    )


def _tokenizer_files(model_path: Path, output_dir: Path, image_id: int, template: str, max_length: int) -> None:
    """tokenizer.model as it is; tokenizer_config.json with `<image>` (and any tokens the checkpoint added)."""
    from transformers import AutoTokenizer

    if not (model_path / "tokenizer.model").is_file():
        raise ExportError(f"{model_path} has no tokenizer.model (a LLaMA sentencepiece tokenizer is expected)")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), use_fast=False)
    shutil.copyfile(model_path / "tokenizer.model", output_dir / "tokenizer.model")

    def entry(content: str, special: bool) -> dict:
        return {"content": content, "lstrip": False, "rstrip": False, "normalized": False,
                "single_word": False, "special": special}  # fmt: skip

    added = {str(i): entry(tokenizer.convert_ids_to_tokens(i), True) for i in (0, 1, 2)}
    for content, index in sorted(tokenizer.get_added_vocab().items(), key=lambda item: item[1]):
        if index > 2:
            added[str(index)] = entry(content, True)
    added[str(image_id)] = entry(DEFAULT_IMAGE_TOKEN, True)
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "unk_token": tokenizer.unk_token,
        "pad_token": tokenizer.unk_token,  # LLaVA pads with unk
        "legacy": True,  # how LLaVA tokenised: text after <image> gets its own leading space
        "add_prefix_space": None,
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
        "model_max_length": max_length,
        "padding_side": "left",
        "sp_model_kwargs": {},
        "image_token": DEFAULT_IMAGE_TOKEN,
        "extra_special_tokens": {"image_token": DEFAULT_IMAGE_TOKEN},
        "added_tokens_decoder": added,
        "chat_template": template,
    }
    (output_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "unk_token": tokenizer.unk_token,
               "pad_token": tokenizer.unk_token, "image_token": DEFAULT_IMAGE_TOKEN}  # fmt: skip
    (output_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def convert(model_path: str | os.PathLike, output_dir: str | os.PathLike, conv_mode: str | None = None) -> dict:
    """Write the export; returns a summary (conversation template used and why, image token id, tensors)."""
    model_path, output_dir = Path(model_path).expanduser(), Path(output_dir).expanduser()
    config = check_exportable(model_path)
    if output_dir.resolve() == model_path.resolve():
        raise ExportError("--output-dir must differ from --model-path (the export is another format)")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ExportError(f"{output_dir} exists and is not empty: give a new folder")
    tower = _tower_folder(config, model_path)
    tower_config = _read_json(tower / "config.json")
    tower_config = tower_config.get("vision_config", tower_config)  # a full CLIP folder nests it
    if tower_config.get("model_type") not in ("clip_vision_model", "clip_vision_config", None):
        raise ExportError(f"{tower}/config.json is no CLIP vision config (model_type {tower_config.get('model_type')!r})")
    tower_files = _weight_files(tower)
    if not tower_files:
        raise ExportError(f"vision tower folder {tower} has no weights (model.safetensors or pytorch_model.bin)")

    if conv_mode is None:
        conv_mode = config.get("conv_template")
        why = "recorded in the checkpoint's config.json" if conv_mode else None
        if not conv_mode:
            conv_mode, why = "vicuna_v1", "the checkpoint records none: LLaVA-1.5's vicuna_v1 (pass --conv-mode)"
    else:
        why = "given with --conv-mode"
    template = chat_template(conv_mode)

    state = rename_language_and_projector(_load_state(_weight_files(model_path)))
    tower_state = _load_state(tower_files)
    if any(key.startswith("text_model.") for key in tower_state):
        tower_state = {k: v for k, v in tower_state.items() if k.startswith("vision_model.")}
    state.update(rename_tower(tower_state))
    embed_key, head_key = "model.language_model.embed_tokens.weight", "lm_head.weight"
    embed, head = state[embed_key], state[head_key]
    image_id = embed.shape[0]
    # One row for <image>: its input row is never looked up by the model (image features take its place);
    # the output row is the mean of the others, so its logit is the mean logit, below the greedy choice.
    state[embed_key] = torch.cat([embed, embed.float().mean(0, keepdim=True).to(embed.dtype)])
    state[head_key] = torch.cat([head, head.float().mean(0, keepdim=True).to(head.dtype)])

    text_config = {key: config[key] for key in TEXT_CONFIG_KEYS if key in config}
    text_config.update(model_type="llama", vocab_size=image_id + 1)
    text_config.setdefault("tie_word_embeddings", False)
    vision_config = {k: v for k, v in tower_config.items() if k not in DROPPED_CONFIG_KEYS}
    vision_config["model_type"] = "clip_vision_model"
    patches = (vision_config["image_size"] // vision_config["patch_size"]) ** 2
    select = config.get("mm_vision_select_feature", "patch")
    dtype = str(next(iter(state.values())).dtype).replace("torch.", "")
    hf_config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "text_config": text_config,
        "vision_config": vision_config,
        "image_token_index": image_id,
        "image_seq_length": patches if select == "patch" else patches + 1,
        "vision_feature_layer": config.get("mm_vision_select_layer", -2),
        "vision_feature_select_strategy": "default" if select == "patch" else "full",
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "tie_word_embeddings": text_config["tie_word_embeddings"],
        "torch_dtype": dtype,
        "conv_template": conv_mode,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    generation = {"bos_token_id": config.get("bos_token_id", 1), "eos_token_id": config.get("eos_token_id", 2),
                  "pad_token_id": config.get("pad_token_id", 0)}  # fmt: skip
    (output_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in state.items()}, str(output_dir / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip

    processor = _read_json(tower / "preprocessor_config.json") if (tower / "preprocessor_config.json").is_file() else {}
    processor = {k: v for k, v in processor.items() if k not in ("image_processor_type", "feature_extractor_type",
                                                                  "processor_class")}  # fmt: skip
    processor.update(image_processor_type="LlavaImageProcessor", processor_class="LlavaProcessor",
                     do_pad=config.get("image_aspect_ratio") == "pad")  # fmt: skip
    (output_dir / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    processor_config = {
        "processor_class": "LlavaProcessor",
        "image_token": DEFAULT_IMAGE_TOKEN,
        "patch_size": vision_config["patch_size"],
        "vision_feature_select_strategy": hf_config["vision_feature_select_strategy"],
        "num_additional_image_tokens": 1,  # the CLS token, which the "default" strategy drops again
    }
    (output_dir / "processor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n")
    (output_dir / "chat_template.jinja").write_text(template)
    _tokenizer_files(model_path, output_dir, image_id, template, config.get("tokenizer_model_max_length", 2048))
    return {"conv_mode": conv_mode, "why": why, "image_token_index": image_id, "tensors": len(state),
            "vision_tower": str(tower), "pad": processor["do_pad"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a full LLaVA-1.5 checkpoint to Hugging Face's llava format.")
    parser.add_argument("--model-path", "--model_path", dest="model_path", required=True)
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True)
    parser.add_argument("--conv-mode", "--conv_mode", dest="conv_mode", default=None,
                        help="conversation template for the chat template (default: the checkpoint's record, "
                             "else vicuna_v1)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        summary = convert(args.model_path, args.output_dir, args.conv_mode)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[convert_to_hf] wrote {args.output_dir}: chat template {summary['conv_mode']!r} ({summary['why']}), "
          f"<image> = token {summary['image_token_index']}, image padding {'on' if summary['pad'] else 'off'}, "
          f"vision tower from {summary['vision_tower']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
