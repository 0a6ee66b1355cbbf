"""Command-line arguments of training: LLaVA-1.5's model/data/training arguments plus VisATB's task weighting.

The dataclasses are parsed by `HfArgumentParser`, so every field is a `--flag`; `validate_args` checks the
task list, the weights and the weight method before any model or data is loaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import transformers

from llava.conversation import SeparatorStyle, conv_templates
from llava.folders import base_model_problem
from llava.model.weight_methods import (
    EWTB_DENOMINATORS,
    WEIGHT_METHODS,
    TaskBalancedWeighting,
    Weighter,
    build_weighter,
    validate_static_weights,
)
from llava.visatb.tasks import resolve_tasks

# The task every sample belongs to when no task list is given (plain, single-task LLaVA training).
SINGLE_TASK = "all"
IMAGE_ASPECT_RATIOS = ("square", "pad")
LORA_BIAS = ("none", "all", "lora_only")


@dataclass
class ModelArguments:
    """The language model, the vision tower and projector, and VisATB's loss weighting."""

    model_name_or_path: str | None = field(
        default="facebook/opt-125m",
        metadata={"help": "Base language model (hub name or folder), e.g. lmsys/vicuna-7b-v1.5."},
    )
    version: str = field(
        default="v1",
        metadata={
            "help": "Conversation template of the training prompts: v1 (LLaVA-1.5 fine-tuning, also "
            "vicuna_v1/llava_v1/v1_mmtag) or plain (projector pretraining)."
        },
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "Freeze the language model's weights."})
    tune_mm_mlp_adapter: bool = field(
        default=False,
        metadata={"help": "Pretraining mode: train only the projector and save only mm_projector.bin."},
    )
    vision_tower: str | None = field(
        default=None,
        metadata={"help": "CLIP vision tower (hub name or folder), e.g. openai/clip-vit-large-patch14-336."},
    )
    mm_vision_select_layer: int = field(
        default=-1, metadata={"help": "Hidden layer of the vision tower whose features are used (-2 in LLaVA-1.5)."}
    )
    pretrain_mm_mlp_adapter: str | None = field(
        default=None, metadata={"help": "mm_projector.bin of the pretraining stage, to initialise the projector."}
    )
    mm_projector_type: str = field(
        default="linear", metadata={"help": "Projector: linear, mlp<N>x_gelu (mlp2x_gelu in LLaVA-1.5) or identity."}
    )
    mm_use_im_start_end: bool = field(
        default=False, metadata={"help": "Wrap image features in <im_start>/<im_end> tokens."}
    )
    mm_use_im_patch_token: bool = field(default=True, metadata={"help": "Add the <im_patch> token to the tokenizer."})
    mm_vision_select_feature: str = field(
        default="patch", metadata={"help": "Vision features: patch (drop CLS) or cls_patch."}
    )
    # VisATB
    num_tasks: int | None = field(
        default=None,
        metadata={"help": "Number of tasks; optional, but when given it must equal the length of the task list."},
    )
    weight_method: str = field(
        default="EW",
        metadata={"help": f"Task loss weighting: {', '.join(WEIGHT_METHODS)} (case-insensitive)."},
    )
    visatb_weights: list[str] | None = field(
        default=None,
        metadata={
            "help": "Static per-task loss weights (VisATB): w1 w2 ... in task-list order, or NAME=w pairs, whose "
            "names are checked against the task list. Also spelled --VisATB_weights.",
            "aliases": ["--VisATB_weights"],
        },
    )
    visatb_weights_file: str | None = field(
        default=None,
        metadata={"help": "JSON written by weighting_visatb.py; its task list must equal the training task list."},
    )
    weight_method_args: str | None = field(
        default=None,
        metadata={
            "help": "Hyperparameters of the weight method as key=value,key=value (e.g. window=25,temperature=2.0 "
            "for DWA, window=100 for IGB); the paper's values are the defaults."
        },
    )
    ewtb_denominator: str = field(
        default="all",
        metadata={
            "help": "EWTB/TLA only: divide by the weights of all tasks (all, the release's) or only of the tasks "
            "present in the micro-batch (present)."
        },
    )
    weighter_seed: int = field(default=0, metadata={"help": "Seed of RLW's random weights (the same on every rank)."})

    def __post_init__(self):
        # Bare numbers become floats here (the release's form); NAME=w pairs stay strings for validate_args.
        if self.visatb_weights is not None and not any("=" in str(v) for v in self.visatb_weights):
            try:
                self.visatb_weights = [float(v) for v in self.visatb_weights]
            except ValueError:
                pass  # validate_args names the bad value


@dataclass
class DataArguments:
    """The training data: LLaVA's JSON list of records, each with a `task` name."""

    data_path: str | None = field(default=None, metadata={"help": "Path to the training data (JSON list)."})
    lazy_preprocess: bool = field(
        default=False, metadata={"help": "Accepted for LLaVA compatibility: samples are always tokenised lazily."}
    )
    is_multimodal: bool = field(
        default=False, metadata={"help": "Set automatically when --vision_tower is given."}
    )
    image_folder: str | None = field(default=None, metadata={"help": "Root folder of the records' image paths."})
    image_aspect_ratio: str = field(
        default="square",
        metadata={"help": "square (the processor's resize and crop) or pad (pad to a square first; LLaVA-1.5)."},
    )
    task_names: str | None = field(
        default=None, metadata={"help": "Task list A,B,...: position = task id = position of its weight."}
    )
    task_preset: str | None = field(
        default=None, metadata={"help": "Task list of a benchmark: academic or chat (instead of --task_names)."}
    )
    default_task: str | None = field(
        default=None, metadata={"help": "Task of records that have no 'task' field (otherwise they are an error)."}
    )
    skip_missing_images: bool = field(
        default=False,
        metadata={"help": "Skip (and count) records whose image file is missing instead of stopping."},
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """Hugging Face's training arguments plus LLaVA's."""

    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder for hub downloads."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (Hugging Face name)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: images and task_ids are not model signature columns."}
    )
    freeze_mm_mlp_adapter: bool = field(default=False, metadata={"help": "Keep the projector frozen."})
    mpt_attn_impl: str | None = field(
        default="triton", metadata={"help": "Accepted for LLaVA compatibility (MPT models only; unused)."}
    )
    model_max_length: int = field(
        default=512,
        metadata={"help": "Maximum sequence length. Sequences will be right padded (and possibly truncated)."},
    )
    double_quant: bool = field(
        default=True, metadata={"help": "Compress the quantization statistics through double quantization."}
    )
    quant_type: str = field(
        default="nf4", metadata={"help": "Quantization data type to use. Should be one of `fp4` or `nf4`."}
    )
    bits: int = field(default=16, metadata={"help": "How many bits to use: 16, or 8 / 4 (bitsandbytes, CUDA only)."})
    lora_enable: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the full model."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_weight_path: str = field(
        default="", metadata={"help": "Not supported (LLaVA accepts it but never reads it); must stay empty."}
    )
    lora_bias: str = field(default="none", metadata={"help": "LoRA bias: none, all or lora_only."})
    mm_projector_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the projector (default: --learning_rate)."}
    )
    group_by_modality_length: bool = field(
        default=False,
        metadata={"help": "Batch image and text-only samples separately, grouped by length (LLaVA-1.5)."},
    )

    def __post_init__(self):
        # Mixed precision, TF32 and DeepSpeed need CUDA; on a CPU the same command runs in fp32 instead of failing.
        if not torch.cuda.is_available() or self.no_cuda:
            dropped = [flag for flag in ("bf16", "fp16", "tf32") if getattr(self, flag)]
            if dropped:
                print(
                    f"[train] no CUDA device: training in fp32 on the CPU (ignoring --{', --'.join(dropped)})",
                    file=sys.stderr,
                    flush=True,
                )
                for flag in dropped:
                    setattr(self, flag, False if flag != "tf32" else None)
            # Pinned memory only helps host-to-GPU copies.
            self.dataloader_pin_memory = False
            if self.deepspeed:
                raise ValueError(
                    "--deepspeed needs CUDA GPUs (the Hugging Face Trainer cannot run DeepSpeed on a CPU); "
                    "drop --deepspeed to train on the CPU"
                )
        super().__post_init__()


@dataclass
class TaskSetup:
    """The validated task list and weighting: what training needs from the VisATB arguments."""

    tasks: list[str]
    weights: list[float] | None
    weighter: Weighter
    single_task: bool  # no task list given: every record trains as task SINGLE_TASK


def parse_weight_method_args(text: str | None) -> dict[str, int | float]:
    """`window=25,temperature=2.0` -> {"window": 25, "temperature": 2.0}."""
    if not text:
        return {}
    values: dict[str, int | float] = {}
    for item in text.split(","):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key or not raw:
            raise ValueError(f"--weight_method_args: {item!r} is not key=value (write e.g. window=25,temperature=2.0)")
        try:
            values[key] = int(raw)
        except ValueError:
            try:
                values[key] = float(raw)
            except ValueError:
                raise ValueError(f"--weight_method_args: value of {key!r} is {raw!r}, not a number") from None
    return values


def supported_versions() -> list[str]:
    """Conversation templates training can preprocess: the v1 (two-separator) family and plain."""
    return [
        name for name, conv in conv_templates.items() if conv.sep_style in (SeparatorStyle.TWO, SeparatorStyle.PLAIN)
    ]


def parse_weight_list(values: Sequence[str | float], tasks: Sequence[str]) -> list[float]:
    """`--visatb_weights` as floats in task order: bare numbers as given, or NAME=w pairs matched by name.

    Named pairs must name every task exactly once, so their order can be confirmed; a mix of both forms is an error.
    """
    named = [isinstance(v, str) and "=" in v for v in values]
    if not any(named):
        out = []
        for k, value in enumerate(values):
            try:
                out.append(float(value))
            except ValueError:
                raise ValueError(f"--visatb_weights: value {k} ({value!r}) is not a number") from None
        return out
    if not all(named):
        raise ValueError("--visatb_weights: give either bare numbers in task order or NAME=w pairs, not a mix")
    by_name: dict[str, str] = {}
    for value in values:
        name, _, number = str(value).partition("=")
        if name in by_name:
            raise ValueError(f"--visatb_weights names task {name!r} twice")
        by_name[name] = number
    unknown = [n for n in by_name if n not in tasks]
    missing = [t for t in tasks if t not in by_name]
    if unknown or missing:
        raise ValueError(
            "--visatb_weights: the named weights do not match the training task list "
            f"({', '.join(tasks)}): " + "; ".join(
                part for part in (f"unknown {', '.join(unknown)}" if unknown else "",
                                  f"missing {', '.join(missing)}" if missing else "") if part)  # fmt: skip
        )
    out = []
    for task in tasks:
        try:
            out.append(float(by_name[task]))
        except ValueError:
            raise ValueError(f"--visatb_weights: weight of {task!r} ({by_name[task]!r}) is not a number") from None
    return out


def _resolve_weights(model_args: ModelArguments, tasks: Sequence[str]) -> list[float] | None:
    listed = f"{len(tasks)} task(s): {', '.join(tasks)}"
    if model_args.visatb_weights is not None and model_args.visatb_weights_file:
        raise ValueError("give the VisATB weights either as --visatb_weights or as --visatb_weights_file, not both")
    if model_args.visatb_weights_file:
        from llava.visatb.weights.weights_file import load_visatb_weights_file

        weights = load_visatb_weights_file(model_args.visatb_weights_file, list(tasks))
        source = f"--visatb_weights_file {model_args.visatb_weights_file}"
    elif model_args.visatb_weights is not None:
        weights = parse_weight_list(model_args.visatb_weights, tasks)
        source = "--visatb_weights"
        if len(weights) != len(tasks):
            raise ValueError(
                f"--visatb_weights has {len(weights)} value(s) {weights} but training has {listed}; "
                "give one weight per task, in task-list order"
            )
    else:
        return None
    try:
        return validate_static_weights(weights, len(tasks), list(tasks))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def _ewtb_denominator(model_args: ModelArguments) -> dict[str, str]:
    """The `denominator` hyperparameter for EWTB/TLA; --ewtb_denominator present is an error elsewhere."""
    choice = model_args.ewtb_denominator
    if choice not in EWTB_DENOMINATORS:
        raise ValueError(f"--ewtb_denominator must be one of {', '.join(EWTB_DENOMINATORS)}, not {choice!r}")
    if WEIGHT_METHODS.get(str(model_args.weight_method).upper()) is TaskBalancedWeighting:
        return {"denominator": choice}
    if choice != "all":
        raise ValueError(
            f"--ewtb_denominator {choice} applies to --weight_method EWTB/TLA only, not {model_args.weight_method}"
        )
    return {}


def validate_args(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> TaskSetup:
    """Check every argument that can be checked without a model or data; return the task list and weighter."""
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required (the base language model, e.g. lmsys/vicuna-7b-v1.5)")
    problem = base_model_problem(model_args.model_name_or_path, "--model_name_or_path")
    if problem:
        raise ValueError(problem)
    if not data_args.data_path:
        raise ValueError("--data_path is required (a JSON list of training records)")
    if training_args.model_max_length < 1:
        raise ValueError(f"--model_max_length must be at least 1, got {training_args.model_max_length}")
    if os.path.exists(training_args.output_dir) and not os.path.isdir(training_args.output_dir):
        raise ValueError(f"--output_dir {training_args.output_dir} is a file, not a folder")
    if model_args.version not in supported_versions():
        raise ValueError(
            f"--version {model_args.version!r} cannot be used for training; supported: {', '.join(supported_versions())}"
        )
    if data_args.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
        raise ValueError(
            f"--image_aspect_ratio {data_args.image_aspect_ratio!r} is not supported; use {' or '.join(IMAGE_ASPECT_RATIOS)}"
        )
    if model_args.pretrain_mm_mlp_adapter:
        if not os.path.isfile(model_args.pretrain_mm_mlp_adapter):
            raise FileNotFoundError(f"--pretrain_mm_mlp_adapter: no such file {model_args.pretrain_mm_mlp_adapter}")
    if training_args.bits not in (4, 8, 16):
        raise ValueError(f"--bits must be 16, 8 or 4, not {training_args.bits}")
    if training_args.bits in (4, 8) and not torch.cuda.is_available():
        raise ValueError(f"--bits {training_args.bits} (bitsandbytes quantisation) needs a CUDA GPU")
    if training_args.lora_bias not in LORA_BIAS:
        raise ValueError(f"--lora_bias must be one of {', '.join(LORA_BIAS)}, not {training_args.lora_bias!r}")
    if training_args.lora_weight_path:
        raise ValueError("--lora_weight_path is not supported (LLaVA accepts it but never reads it); remove it")
    if training_args.remove_unused_columns:
        raise ValueError("--remove_unused_columns must be False: it would drop images and task_ids from the batches")
    if training_args.mm_projector_lr is not None and not training_args.mm_projector_lr > 0:
        raise ValueError(f"--mm_projector_lr must be positive, not {training_args.mm_projector_lr}")

    single_task = not (data_args.task_names or data_args.task_preset)
    tasks = [SINGLE_TASK] if single_task else resolve_tasks(data_args.task_names, data_args.task_preset)
    if model_args.num_tasks is not None and model_args.num_tasks != len(tasks):
        if single_task:
            raise ValueError(
                f"--num_tasks {model_args.num_tasks} but no task list was given: pass --task_names A,B,... "
                "or --task_preset academic|chat"
            )
        raise ValueError(
            f"--num_tasks {model_args.num_tasks} disagrees with the task list, which has {len(tasks)} task(s): "
            f"{', '.join(tasks)}"
        )
    if data_args.default_task is not None and not single_task and data_args.default_task not in tasks:
        raise ValueError(
            f"--default_task {data_args.default_task!r} is not in the task list; known tasks: {', '.join(tasks)}"
        )
    weights = _resolve_weights(model_args, tasks)
    hyperparameters: dict[str, int | float | str] = dict(parse_weight_method_args(model_args.weight_method_args))
    hyperparameters.update(_ewtb_denominator(model_args))
    weighter = build_weighter(
        model_args.weight_method,
        len(tasks),
        task_names=tasks,
        weights=weights,
        seed=model_args.weighter_seed,
        **hyperparameters,
    )
    return TaskSetup(tasks=tasks, weights=weights, weighter=weighter, single_task=single_task)
