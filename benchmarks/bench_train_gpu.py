"""Throughput of real LLaVA-shaped training on a GPU: tokens/s and peak memory (see bench_train_gpu.sh).

    python benchmarks/bench_train_gpu.py prepare --out DIR [--layers 16 --hidden 2048]
        writes DIR/base (tokenizer + ~1B-parameter LLaMA with random bf16 weights), DIR/vision_tower
        (CLIP ViT-L/14-336-shaped, random), DIR/images and DIR/train.json (Academic tasks, one image each)
    deepspeed --no_local_rank benchmarks/bench_train_gpu.py run --result FILE --attn sdpa|eager -- <flags>
        trains with llava.train.train's flags and writes FILE: seconds per step after warm-up, tokens per
        second (text + image tokens, padding excluded) and peak GPU memory
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

# Steps excluded from the timing (allocator and kernel warm-up).
WARMUP_STEPS = 2
CORPUS_WORDS = (
    "the a red green blue small large circle square triangle left right top bottom image shows picture "
    "of on in with and there is are two three question answer caption region describe detail"
).split()


def prepare(out: Path, layers: int, hidden: int, records: int, answer_words: int) -> None:
    from PIL import Image
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from llava.model.tiny import train_tokenizer
    from llava.visatb.tasks import ACADEMIC

    device = "cuda" if torch.cuda.is_available() else "cpu"
    corpus = [" ".join(CORPUS_WORDS[i:] + CORPUS_WORDS[:i]) for i in range(len(CORPUS_WORDS))]
    train_tokenizer(corpus, out / "base", vocab_size=400)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 43 // 16,
                         num_hidden_layers=layers, num_attention_heads=hidden // 128, max_position_embeddings=4096)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    print(f"[prepare] LLaMA: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters", flush=True)
    model.save_pretrained(out / "base")
    del model
    tower_config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                    num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    with torch.device(device):
        tower = CLIPVisionModel(tower_config).to(torch.bfloat16)
    tower.save_pretrained(out / "vision_tower")
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(
        out / "vision_tower")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    data = []
    tasks = ACADEMIC.tasks
    for i in range(records):
        Image.new("RGB", (336, 252), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(images / f"{i}.png")
        answer = " ".join(CORPUS_WORDS[(i + k) % len(CORPUS_WORDS)] for k in range(answer_words))
        data.append({"id": str(i), "image": f"{i}.png", "task": tasks[i % len(tasks)], "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image in detail."}, {"from": "gpt", "value": answer}]})
    (out / "train.json").write_text(json.dumps(data))
    print(f"[prepare] wrote {records} records to {out}", flush=True)


def _stand_in_for_fast_bert_tokenizer() -> None:
    """Let transformers 4.31's Trainer import without the `tokenizers` package (Python 3.12 GPU nodes).

    Its data collator imports BertTokenizerFast, which exists only with `tokenizers` < 0.14, and that series
    has no Python 3.12 wheels. LLaVA uses slow tokenizers, so transformers' own placeholder class stands in.
    """
    import importlib.util

    if importlib.util.find_spec("tokenizers") is not None:
        return
    import transformers.models.bert as bert
    from transformers.utils import dummy_tokenizers_objects

    bert.BertTokenizerFast = dummy_tokenizers_objects.BertTokenizerFast


def run(result_file: Path, attn: str, train_args: list[str]) -> None:
    _stand_in_for_fast_bert_tokenizer()
    from transformers import TrainerCallback

    from llava.train import llava_trainer
    from llava.train.train import train

    cuda = torch.cuda.is_available()
    step_ends: list[float] = []
    tokens: list[int] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            step_ends.append(time.perf_counter())

    def count_tokens(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        embeds = kwargs.get("inputs_embeds")
        if mask is not None:
            tokens.append(int(mask.sum()))
        elif embeds is not None:
            tokens.append(embeds.shape[0] * embeds.shape[1])

    original_init = llava_trainer.LLaVATrainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(StepTimer())
        self.model.get_model().register_forward_pre_hook(count_tokens, with_kwargs=True)

    llava_trainer.LLaVATrainer.__init__ = init
    train(attn_implementation=None if attn == "eager" else attn, args=train_args)
    if os.environ.get("RANK", "0") != "0":
        return
    timed_steps = len(step_ends) - WARMUP_STEPS
    if timed_steps < 1:
        raise ValueError(f"run at least {WARMUP_STEPS + 1} steps to time one (got {len(step_ends)})")
    seconds = step_ends[-1] - step_ends[WARMUP_STEPS - 1]
    # One LlamaModel forward per micro-batch; gradient accumulation is 1 here, so one per step.
    timed_tokens = sum(tokens[WARMUP_STEPS:])
    result = {
        "attention": attn,
        "gpu": torch.cuda.get_device_name() if cuda else "cpu",
        "timed_steps": timed_steps,
        "seconds_per_step": seconds / timed_steps,
        "tokens_per_step": timed_tokens / timed_steps,
        "tokens_per_second": timed_tokens / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] {json.dumps(result)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write the random LLaVA-shaped model and the data")
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--layers", type=int, default=16)
    prep.add_argument("--hidden", type=int, default=2048)
    prep.add_argument("--records", type=int, default=256)
    prep.add_argument("--answer-words", type=int, default=160)
    runner = sub.add_parser("run", help="train with timing (pass training flags after --)")
    runner.add_argument("--result", type=Path, required=True)
    runner.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    runner.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.out, args.layers, args.hidden, args.records, args.answer_words)
    else:
        train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
        run(args.result, args.attn, train_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
