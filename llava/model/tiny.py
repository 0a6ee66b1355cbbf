"""Build complete tiny LLaVA checkpoints offline: tokenizer, vision tower, language model, projector.

The folders are written with `save_pretrained` and load through `load_pretrained_model`, the same path a
real LLaVA-1.5 checkpoint takes. Tests and the toy benchmark build their models here.

    python -m llava.model.tiny --output-dir checkpoints/tiny [--corpus corpus.txt] [--kind full]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from llava.conversation import conv_templates

DEFAULT_CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is in the image? ASSISTANT: A red circle in the top left corner.",
    "Answer the question using a single word or phrase.",
    "Describe the image in detail. There is a blue square and a green triangle on a white background.",
    "Please provide the bounding box coordinate of the region this sentence describes: the red circle.",
    "[0.12, 0.34, 0.56, 0.78] yes no one two three four five six seven eight nine zero",
]


@dataclass
class TinyConfig:
    """Sizes of a tiny LLaVA; the defaults build in about a second on a CPU."""

    vocab_size: int = 400
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 512
    image_size: int = 32
    patch_size: int = 8
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_select_layer: int = -2
    image_aspect_ratio: str = "pad"
    model_max_length: int = 512
    seed: int = 0


def train_tokenizer(texts: list[str], output_dir: str | os.PathLike, vocab_size: int) -> None:
    """Train a LLaMA-style SentencePiece BPE model (unk 0, bos 1, eos 2, byte fallback) and save a tokenizer."""
    from transformers import LlamaTokenizer

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("the tokenizer corpus is empty")
    # Byte fallback needs 256 byte pieces, the three specials and one piece per distinct character.
    minimum = 256 + 3 + len(set("".join(texts)))
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-fallback tokenizer (minimum {minimum})")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_file = output_dir / "tokenizer.model"
    model_file.write_bytes(model.getvalue())
    tokenizer = LlamaTokenizer(str(model_file), legacy=True, add_bos_token=True, add_eos_token=False)
    tokenizer.model_max_length = 2048
    tokenizer.save_pretrained(str(output_dir))


def build_vision_tower(output_dir: str | os.PathLike, cfg: TinyConfig) -> str:
    """A randomly initialised CLIP vision tower plus a matching `CLIPImageProcessor`."""
    torch.manual_seed(cfg.seed)
    vision_config = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_intermediate_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden_size,
    )
    CLIPVisionModel(vision_config).save_pretrained(str(output_dir))
    processor = CLIPImageProcessor(
        size={"shortest_edge": cfg.image_size},
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
    )
    processor.save_pretrained(str(output_dir))
    return str(output_dir)


def _llama_config(cfg: TinyConfig, vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )


def build_base_lm(output_dir: str | os.PathLike, cfg: TinyConfig, texts: list[str] | None = None) -> str:
    """The 'Vicuna' of the tiny world: a tokenizer and a random LLaMA, saved like a hub checkpoint."""
    from transformers import LlamaTokenizer

    output_dir = Path(output_dir)
    corpus = list(texts or []) + DEFAULT_CORPUS + [conv.system for conv in conv_templates.values() if conv.system]
    train_tokenizer(corpus, output_dir, cfg.vocab_size)
    tokenizer = LlamaTokenizer.from_pretrained(str(output_dir))
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(LlamaConfig(**_llama_config(cfg, len(tokenizer))))
    model.save_pretrained(str(output_dir))
    return str(output_dir)


def build_tiny_llava(
    output_dir: str | os.PathLike,
    texts: list[str] | None = None,
    cfg: TinyConfig | None = None,
    kind: str = "full",
) -> dict[str, str]:
    """Write a tiny LLaVA checkpoint of one of LLaVA's three kinds and return the folders written.

    kind "full": `<out>/llava-tiny` (whole model). kind "projector": `<out>/llava-tiny-projector` holding
    `config.json` + `mm_projector.bin`, loaded with model_base `<out>/base`. kind "lora":
    `<out>/llava-tiny-lora` holding a LoRA adapter + `non_lora_trainables.bin`, loaded with the same base.
    Every kind also writes `<out>/base` (tokenizer + LLaMA) and `<out>/vision_tower`.
    """
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

    if kind not in ("full", "projector", "lora"):
        raise ValueError(f"unknown checkpoint kind {kind!r}; use full, projector or lora")
    cfg = cfg or TinyConfig()
    out = Path(output_dir)
    base_dir, tower_dir = out / "base", out / "vision_tower"
    build_base_lm(base_dir, cfg, texts)
    build_vision_tower(tower_dir, cfg)

    from transformers import LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(str(base_dir))
    config = LlavaConfig(
        **_llama_config(cfg, len(tokenizer)),
        mm_vision_tower=str(tower_dir.resolve()),
        mm_hidden_size=cfg.vision_hidden_size,
        mm_projector_type=cfg.mm_projector_type,
        mm_vision_select_layer=cfg.mm_vision_select_layer,
        mm_vision_select_feature="patch",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_aspect_ratio=cfg.image_aspect_ratio,
        tokenizer_padding_side="right",
        tokenizer_model_max_length=cfg.model_max_length,
        use_mm_proj=True,
        tune_mm_mlp_adapter=False,
        freeze_mm_mlp_adapter=False,
    )
    # Same language weights as the base, so every kind reconstructs the same model.
    model = LlavaLlamaForCausalLM.from_pretrained(str(base_dir), config=config)
    torch.manual_seed(cfg.seed + 1)
    for module in model.get_model().mm_projector.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
            torch.nn.init.zeros_(module.bias)
    written = {"base": str(base_dir), "vision_tower": str(tower_dir)}

    if kind == "full":
        target = out / "llava-tiny"
        model.save_pretrained(str(target))
        tokenizer.save_pretrained(str(target))
    elif kind == "projector":
        target = out / "llava-tiny-projector"
        target.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(target))
        projector = {f"model.mm_projector.{k}": v for k, v in model.get_model().mm_projector.state_dict().items()}
        torch.save(projector, target / "mm_projector.bin")
    else:
        from peft import LoraConfig, get_peft_model

        target = out / "llava-tiny-lora"
        lora = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                              bias="none", task_type="CAUSAL_LM")
        )
        torch.manual_seed(cfg.seed + 2)
        for name, param in lora.named_parameters():
            if "lora_B" in name:  # non-zero so that merging visibly changes the model
                torch.nn.init.normal_(param, std=0.02)
        lora.save_pretrained(str(target))
        config.save_pretrained(str(target))
        non_lora = {
            name: param.detach().clone()
            for name, param in lora.named_parameters()
            if "mm_projector" in name
        }
        torch.save(non_lora, target / "non_lora_trainables.bin")
        model = lora.merge_and_unload()
    written[kind] = str(target)
    (out / "tiny_config.json").write_text(json.dumps({"kind": kind, **asdict(cfg)}, indent=2) + "\n")
    written["reference_state"] = model.state_dict()  # what loading the checkpoint must reproduce
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--kind", default="full", choices=["full", "projector", "lora"])
    parser.add_argument("--corpus", help="text file (one sentence a line) to train the tokenizer on")
    for name, value in asdict(TinyConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    texts = None
    if args.corpus:
        if not os.path.isfile(args.corpus):
            print(f"error: corpus file not found: {args.corpus}", file=sys.stderr)
            return 2
        texts = Path(args.corpus).read_text(encoding="utf-8").splitlines()
    cfg = TinyConfig(**{k: getattr(args, k) for k in asdict(TinyConfig())})
    written = build_tiny_llava(args.output_dir, texts, cfg, args.kind)
    written.pop("reference_state")
    print(json.dumps(written, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
