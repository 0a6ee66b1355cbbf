"""`LLaVATrainer`: the Hugging Face Trainer with LLaVA's sampler, projector learning rate and saving, and the weighter.

The trainer owns the task weighter: it hands it to the model (whose forward reduces the token loss with it),
closes every optimizer step with `weighter.step(global_step)` on every rank, adds the per-task losses and
weights to each training log (so `report_to` backends receive them), and saves and restores the
weighter's state with each checkpoint.
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler
from transformers import Trainer, TrainerCallback
from transformers.trainer import (
    ALL_LAYERNORM_LAYERS,
    get_parameter_names,
    has_length,
    is_sagemaker_mp_enabled,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from llava.constants import NON_LORA_NAME
from llava.model.llava_arch import load_projector_into, load_projector_weights
from llava.model.weight_methods import Weighter
from llava.train.resume import checkpoint_safe_globals
from llava.train.zero_utils import get_peft_state_non_lora_maybe_zero_3, save_projector
from llava.utils import atomic_write_json, load_json

WEIGHTER_STATE_NAME = "weighter_state.json"
# A task losing more than this share of its samples to truncation (fully masked) gets a warning.
TRUNCATION_WARN_FRACTION = 0.02
# ... once at least this many of its samples have been seen (mid-run; the end-of-run summary always warns).
TRUNCATION_WARN_MIN_SAMPLES = 50


# ---------------------------------------------------------------------------------------------
# Length- and modality-grouped sampling (LLaVA-1.5's --group_by_modality_length)


def split_to_even_chunks(indices: Sequence[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Deal `indices` into `num_chunks` equally sized chunks with similar total length (longest first)."""
    if len(indices) % num_chunks != 0:
        return [list(indices[i::num_chunks]) for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = float("inf")
    return chunks


def get_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator | None = None
) -> list[int]:
    """Shuffle, cut into megabatches of world_size * batch_size, sort each by length, deal it to the ranks."""
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch_size = world_size * batch_size
    order: list[int] = []
    for start in range(0, len(indices), megabatch_size):
        megabatch = sorted(indices[start : start + megabatch_size], key=lambda i: lengths[i], reverse=True)
        for chunk in split_to_even_chunks(megabatch, lengths, world_size):
            order.extend(chunk)
    return order


def get_modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator | None = None
) -> list[int]:
    """Like `get_length_grouped_indices`, but every megabatch holds only image (length > 0) or only text samples.

    The two leftover partial megabatches go last, together.
    """
    if any(length == 0 for length in lengths):
        raise ValueError("modality lengths must be non-zero: positive for image samples, negative for text-only")
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return get_length_grouped_indices([abs(x) for x in lengths], batch_size, world_size, generator)
    mm = [(i, length) for i, length in enumerate(lengths) if length > 0]
    text = [(i, -length) for i, length in enumerate(lengths) if length < 0]
    megabatch_size = world_size * batch_size

    def megabatches(group: list[tuple[int, int]]) -> list[list[int]]:
        ids, group_lengths = zip(*group)
        order = [ids[i] for i in get_length_grouped_indices(group_lengths, batch_size, world_size, generator)]
        return [order[i : i + megabatch_size] for i in range(0, len(order), megabatch_size)]

    mm_batches, text_batches = megabatches(mm), megabatches(text)
    leftover = mm_batches[-1] + text_batches[-1]
    full = mm_batches[:-1] + text_batches[:-1]
    shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    if leftover:
        shuffled.append(sorted(leftover))
    return [i for batch in shuffled for i in batch]


class LengthGroupedSampler(Sampler):
    """Groups samples of similar length (and, optionally, the same modality) into the same batches.

    The order comes from a generator seeded with `seed` + epoch, so every rank draws the same order.
    """

    def __init__(
        self,
        batch_size: int,
        world_size: int,
        lengths: Sequence[int] | None = None,
        seed: int = 0,
        group_by_modality: bool = False,
    ) -> None:
        if lengths is None:
            raise ValueError("LengthGroupedSampler needs the samples' lengths")
        self.batch_size = batch_size
        self.world_size = world_size
        self.lengths = list(lengths)
        self.seed = seed
        self.group_by_modality = group_by_modality
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        # Each new pass is a new epoch; the Trainer replays skipped epochs on resume, which keeps this in step.
        self.epoch += 1
        if self.group_by_modality:
            order = get_modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator)
        else:
            order = get_length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator)
        return iter(order)


# ---------------------------------------------------------------------------------------------
# The weighter's place in training


def attach_weighter(model: torch.nn.Module, weighter: Weighter | None) -> int:
    """Set `weighter` on every LLaVA causal LM inside `model` (through PEFT/DDP wrappers); returns how many."""
    found = 0
    for module in model.modules():
        if hasattr(module, "weighter") and callable(getattr(module, "token_loss", None)):
            module.weighter = weighter
            found += 1
    if found == 0 and weighter is not None:
        raise ValueError(f"{type(model).__name__} has no LLaVA language model with a weighted loss (`weighter`)")
    return found


class WeighterStepCallback(TrainerCallback):
    """Closes each optimizer step for the weighter (a collective under torch.distributed: runs on every rank)."""

    def __init__(self, weighter: Weighter) -> None:
        self.weighter = weighter

    def on_step_end(self, args, state, control, **kwargs):
        self.weighter.step(state.global_step)
        return control


def optimizer_param_groups(
    model: torch.nn.Module, weight_decay: float, projector_lr: float | None = None
) -> list[dict]:
    """Trainable parameters in groups: with / without weight decay, and the projector at its own lr."""
    decay = {n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n}
    groups = []
    for is_projector in (False, True):
        for decays in (True, False):
            params = [
                p
                for n, p in model.named_parameters()
                if p.requires_grad and (n in decay) == decays and ("mm_projector" in n) == is_projector
            ]
            if not params:
                continue
            group = {"params": params, "weight_decay": weight_decay if decays else 0.0}
            if is_projector and projector_lr is not None:
                group["lr"] = projector_lr
            groups.append(group)
    return groups


def truncation_summary(counts: torch.Tensor, task_names: Sequence[str], max_length: int) -> list[str]:
    """Report lines from per-task [seen, cut short, fully masked] sample counts; WARNING lines above 2% masked."""
    lines, warnings_ = [], []
    for task, (seen, cut, masked) in zip(task_names, counts.tolist()):
        if not (cut or masked):
            continue
        share = 100.0 * masked / max(seen, 1)
        lines.append(f"[train]   {task}: {masked} of {seen} sample(s) ({share:.1f}%) fully masked"
                     + (f", {cut} cut short" if cut else ""))  # fmt: skip
        if masked > TRUNCATION_WARN_FRACTION * seen:
            warnings_.append(f"WARNING: task {task} lost {share:.1f}% of its samples to truncation (model_max_length "
                             f"{max_length}): raise --model_max_length or shorten those samples")  # fmt: skip
    if not lines:
        return []
    header = f"[train] samples that truncation at model_max_length {max_length} cut short or masked (trained at loss 0):"
    return [header, *lines, *warnings_]


class LLaVATrainer(Trainer):
    """LLaVA's trainer plus VisATB's task weighter (`weighter`, optional)."""

    def __init__(self, *args, weighter: Weighter | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weighter = weighter
        self.tokenization_mismatches = 0
        # Per task: samples seen, cut short and fully masked by truncation (see data.truncation_effect).
        self.truncation_counts = torch.zeros(weighter.num_tasks if weighter is not None else 1, 3, dtype=torch.long)
        self._truncation_warned: set[int] = set()
        if weighter is not None:
            attach_weighter(self.model, weighter)
            self.add_callback(WeighterStepCallback(weighter))

    # -- data -------------------------------------------------------------------------------------

    def _get_train_sampler(self) -> torch.utils.data.Sampler | None:
        if self.train_dataset is None or not has_length(self.train_dataset):
            return None
        if self.args.group_by_modality_length:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return LengthGroupedSampler(
                self.args.train_batch_size,
                world_size=self.args.world_size * self.args.gradient_accumulation_steps,
                lengths=self.train_dataset.modality_lengths,
                seed=seed,
                group_by_modality=True,
            )
        return super()._get_train_sampler()

    def compute_loss(self, model, inputs, return_outputs=False):
        mismatches = inputs.pop("tokenization_mismatches", None)
        if mismatches is not None and model.training:
            self.tokenization_mismatches += int(mismatches.sum())
        truncated = inputs.pop("truncated_samples", None)
        if truncated is not None and model.training and "task_ids" in inputs:
            self._count_truncation(inputs["task_ids"].detach().cpu(), truncated.detach().cpu())
        return super().compute_loss(model, inputs, return_outputs=return_outputs)

    def _count_truncation(self, task_ids: torch.Tensor, codes: torch.Tensor) -> None:
        needed = int(task_ids.max()) + 1 if task_ids.numel() else 0
        if needed > self.truncation_counts.shape[0]:
            grown = torch.zeros(needed, 3, dtype=torch.long)
            grown[: self.truncation_counts.shape[0]] = self.truncation_counts
            self.truncation_counts = grown
        for task, code in zip(task_ids.tolist(), codes.tolist()):
            self.truncation_counts[task, 0] += 1
            if code:
                self.truncation_counts[task, code] += 1

    def total_truncation_counts(self) -> torch.Tensor:
        """Per-task [seen, cut short, fully masked] over all ranks (a collective: call it on every rank)."""
        counts = self.truncation_counts.to(self.args.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts)
        return counts.cpu()

    def _task_names(self, n: int) -> list[str]:
        names = list(self.weighter.task_names) if self.weighter is not None else []
        return names[:n] + [f"task{k}" for k in range(len(names), n)]

    def truncation_report(self) -> list[str]:
        """The end-of-run summary of what truncation dropped, per task (a collective, like the counts)."""
        counts = self.total_truncation_counts()
        return truncation_summary(counts, self._task_names(counts.shape[0]), self.tokenizer.model_max_length
                                  if self.tokenizer is not None else 0)  # fmt: skip

    def _warn_truncation(self, counts: torch.Tensor) -> None:
        names = self._task_names(counts.shape[0])
        for task, (seen, _, masked) in enumerate(counts.tolist()):
            if task in self._truncation_warned or seen < TRUNCATION_WARN_MIN_SAMPLES:
                continue
            if masked > TRUNCATION_WARN_FRACTION * seen:
                self._truncation_warned.add(task)
                if self.args.should_log:
                    print(f"WARNING: so far {masked} of {seen} samples of task {names[task]} were fully masked by "
                          "truncation (model_max_length); they train nothing", file=sys.stderr, flush=True)  # fmt: skip

    # -- optimisation -----------------------------------------------------------------------------

    def create_optimizer(self):
        if self.args.mm_projector_lr is None or is_sagemaker_mp_enabled() or self.optimizer is not None:
            return super().create_optimizer()
        groups = optimizer_param_groups(self.model, self.args.weight_decay, self.args.mm_projector_lr)
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # -- logging ----------------------------------------------------------------------------------

    def _total_mismatches(self) -> int:
        count = torch.tensor(self.tokenization_mismatches, dtype=torch.long, device=self.args.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(count)
        return int(count.item())

    def log(self, logs: dict[str, float]) -> None:
        # Training logs (they carry "loss") run on every rank at the same step, so the all-reduce is safe here.
        if "loss" in logs:
            if self.weighter is not None:
                logs.update(self.weighter.log_stats())
            mismatches = self._total_mismatches()
            if mismatches:
                logs["tokenization_mismatches"] = mismatches
            counts = self.total_truncation_counts()
            if counts[:, 1:].any():
                logs["truncated_samples"] = int(counts[:, 1].sum())
                logs["masked_samples"] = int(counts[:, 2].sum())
                self._warn_truncation(counts)
        super().log(logs)

    # -- saving and resuming ------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if getattr(self.args, "tune_mm_mlp_adapter", False):
            save_projector(self.model, output_dir, getattr(self.args, "use_im_start_end", False), self.args.should_save)
            return
        super().save_model(output_dir, _internal_call=_internal_call)
        if getattr(self.args, "lora_enable", False):
            non_lora = get_peft_state_non_lora_maybe_zero_3(self.model.named_parameters())
            if self.args.should_save:
                self.model.config.save_pretrained(output_dir)
                torch.save(non_lora, os.path.join(output_dir, NON_LORA_NAME))

    def _save_checkpoint(self, model, trial, metrics=None):
        super()._save_checkpoint(model, trial, metrics=metrics)
        if self.weighter is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            atomic_write_json(os.path.join(folder, WEIGHTER_STATE_NAME), self.weighter.state_dict())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        if getattr(self.args, "tune_mm_mlp_adapter", False):
            # Pretraining checkpoints hold only the projector (the rest of the model is frozen).
            path = os.path.join(resume_from_checkpoint, "mm_projector.bin")
            load_projector_into(model.get_model().mm_projector, load_projector_weights(path), path)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        if getattr(self.args, "lora_enable", False):
            path = os.path.join(resume_from_checkpoint, NON_LORA_NAME)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} is missing: the checkpoint lacks the LoRA run's projector weights")
            result = model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=False)
            if result.unexpected_keys:
                raise ValueError(f"{path} holds tensors the model does not have: {result.unexpected_keys[:5]}")

    def _load_rng_state(self, checkpoint):
        # The Trainer of transformers 4.31 reads its own RNG file with torch.load's defaults, which torch >= 2.6
        # refuses (the file holds numpy state). It is read here with the restricted unpickler, allowing numpy's
        # array classes only: a planted file cannot run code (resume.py refuses such a checkpoint earlier still).
        if checkpoint is None:
            return
        name = f"rng_state_{self.args.process_index}.pth" if self.args.world_size > 1 else "rng_state.pth"
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            warnings.warn(f"{path} not found: the resumed run's random state will differ", stacklevel=2)
            return
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.random.set_rng_state(state["cpu"])
        if torch.cuda.is_available() and "cuda" in state:
            if self.args.world_size > 1:
                torch.cuda.random.set_rng_state_all(state["cuda"])
            else:
                torch.cuda.random.set_rng_state(state["cuda"])

    def load_weighter_state(self, checkpoint: str) -> None:
        """Restore the weighter's history and weights saved with `checkpoint` (a warning when there are none)."""
        path = os.path.join(checkpoint, WEIGHTER_STATE_NAME)
        if not os.path.isfile(path):
            print(f"[train] {path} not found: the weighter starts afresh", file=sys.stderr, flush=True)
            return
        self.weighter.load_state_dict(load_json(path))

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint-* folder to resume from in {self.args.output_dir}")
        if resume_from_checkpoint and self.weighter is not None:
            self.load_weighter_state(resume_from_checkpoint)
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )
