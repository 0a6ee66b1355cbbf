"""Training-step time of the VisATB weighted loss against the plain unweighted token loss.

    python benchmarks/bench_weighted_loss.py [--device cpu|cuda] [--rounds 20] [--steps 1]

The same small LLaVA language model and batch (random weights, 32000-token vocabulary, right padding)
is trained with three losses, in alternating order within one process:
  plain     no weighter: the mean token loss over the label mask (LLaVA without VisATB);
  hf        transformers' own LlamaForCausalLM loss on identical weights (the reference);
  weighted  the EW weighter with 8 static VisATB weights and per-sample task ids, closed with
            weighter.step() after every optimizer step, as the trainer does.
Each round times `--steps` steps of every mode (the order flips every round); the reported step time is
the median over rounds, which shrugs off other processes' noise, and the ratio weighted / plain is the
figure of merit (target: at most 1.03).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from transformers import LlamaForCausalLM

from llava.constants import IGNORE_INDEX
from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.weight_methods import build_weighter
from llava.visatb.tasks import ACADEMIC

VISATB_WEIGHTS = [1.05, 1.10, 0.95, 0.98, 0.92, 0.90, 1.35, 1.0]  # the Academic preset's 8 tasks


def make_batch(batch_size: int, seq_len: int, vocab: int, num_tasks: int, device: str) -> dict[str, torch.Tensor]:
    """Random token ids, sequences of different lengths (right padded), the first third of each masked."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (batch_size, seq_len), generator=generator)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size,), generator=generator)
    attention_mask = torch.arange(seq_len)[None] < lengths[:, None]
    labels = input_ids.masked_fill(~attention_mask, IGNORE_INDEX)
    labels[:, : seq_len // 3] = IGNORE_INDEX
    task_ids = torch.arange(batch_size) % num_tasks
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "task_ids": task_ids}
    return {k: v.to(device) for k, v in batch.items()}


def build_models(args: argparse.Namespace) -> tuple[LlavaLlamaForCausalLM, LlamaForCausalLM]:
    torch.manual_seed(0)
    config = LlavaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
        max_position_embeddings=max(512, args.seq_len), use_cache=False,
    )
    llava = LlavaLlamaForCausalLM(config).to(args.device)
    reference = LlamaForCausalLM(config).to(args.device)
    reference.load_state_dict(llava.state_dict())
    return llava, reference


class Mode:
    """One way of computing the loss, with its own copy of the optimizer state."""

    def __init__(self, name: str, model: torch.nn.Module, batch: dict, weighter=None, autocast: bool = False):
        self.name = name
        self.model = model
        self.batch = batch if weighter is not None else {k: v for k, v in batch.items() if k != "task_ids"}
        self.weighter = weighter
        self.autocast = autocast
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        self.step_count = 0
        self.times: list[float] = []

    def step(self) -> None:
        if isinstance(self.model, LlavaLlamaForCausalLM):
            self.model.weighter = self.weighter
        with torch.autocast(self.batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.model(**self.batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        if self.weighter is not None:
            self.weighter.step(self.step_count)

    def timed(self, steps: int, device: str) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps


def run(args: argparse.Namespace) -> dict:
    llava, reference = build_models(args)
    tasks = list(ACADEMIC.tasks)
    batch = make_batch(args.batch_size, args.seq_len, args.vocab, len(tasks), args.device)
    autocast = args.device.startswith("cuda")
    weighter = build_weighter("EW", len(tasks), tasks, weights=VISATB_WEIGHTS)
    modes = [Mode("plain", llava, batch, autocast=autocast), Mode("hf", reference, batch, autocast=autocast),
             Mode("weighted", llava, batch, weighter, autocast=autocast)]
    for mode in modes:  # warm-up: allocator, kernels, optimizer state
        mode.timed(1, args.device)
    for round_index in range(args.rounds):
        order = modes if round_index % 2 == 0 else modes[::-1]
        for mode in order:
            mode.times.append(mode.timed(args.steps, args.device))
    medians = {mode.name: statistics.median(mode.times) for mode in modes}
    return {
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "shape": {"batch": args.batch_size, "seq_len": args.seq_len, "vocab": args.vocab, "hidden": args.hidden,
                  "layers": args.layers},
        "median_step_s": medians,
        "ratio_weighted_vs_plain": medians["weighted"] / medians["plain"],
        "ratio_weighted_vs_hf": medians["weighted"] / medians["hf"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=20, help="alternating rounds (median over them)")
    parser.add_argument("--steps", type=int, default=1, help="training steps per mode per round")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    if min(args.rounds, args.steps, args.batch_size, args.seq_len) < 1:
        print("error: --rounds, --steps, --batch-size and --seq-len must be positive", file=sys.stderr)
        return 2
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"device {result['device']}; batch {args.batch_size} x {args.seq_len} tokens, vocab {args.vocab}, "
          f"hidden {args.hidden}, {args.layers} layers; {args.rounds} rounds x {args.steps} steps")
    for name, seconds in result["median_step_s"].items():
        print(f"  {name:<9}{seconds * 1000:9.1f} ms / step")
    print(f"weighted / plain step time: {result['ratio_weighted_vs_plain']:.3f} (target <= 1.03)")
    print(f"weighted / hf    step time: {result['ratio_weighted_vs_hf']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
