"""Minimal VisATB integration into a plain Hugging Face causal LM and Trainer (reference, not imported).

Run it from anywhere as a script to see the two hooks at work on a tiny random LLaMA.
"""

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from llava.model.weight_methods import build_weighter, reduce_token_loss


class WeightedLlama(LlamaForCausalLM):
    """Hook 1: reduce per-token losses with `self.weighter` and the batch's `task_ids`."""

    weighter = None

    def forward(self, input_ids=None, labels=None, task_ids=None, **kwargs):
        out = super().forward(input_ids=input_ids, **kwargs)
        if labels is not None:
            logits, targets = out.logits[:, :-1], labels[:, 1:]
            per_token = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
            ).view(targets.shape)
            out["loss"] = reduce_token_loss(per_token, targets != -100, task_ids, self.weighter)
        return out


class StepWeighter(TrainerCallback):
    """Hook 2: advance the weighter once per optimizer step."""

    def __init__(self, weighter):
        self.weighter = weighter

    def on_step_end(self, args, state, control, **kwargs):
        self.weighter.step(state.global_step)


if __name__ == "__main__":
    model = WeightedLlama(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2))
    weighter = build_weighter("EW", num_tasks=2, weights=[1.5, 0.5])  # VisATB: static weights
    model.weighter = weighter
    data = [{"input_ids": torch.randint(3, 64, (8,)), "task_ids": torch.tensor(i % 2)} for i in range(16)]
    for sample in data:
        sample["labels"] = sample["input_ids"].clone()
    args = TrainingArguments("/tmp/visatb-minimal", max_steps=4, per_device_train_batch_size=4, no_cuda=True,
                             remove_unused_columns=False, report_to=[], logging_steps=1)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[StepWeighter(weighter)]).train()
    print(weighter.log_stats())
