"""Train LLaVA-1.5 with VisATB task weighting (LLaVA's flags plus --task_preset/--weight_method/--visatb_weights).

    python -m llava.train.train --model_name_or_path lmsys/vicuna-7b-v1.5 --version v1 \
        --data_path data/Academic_train-475k.json --image_folder data --task_preset academic \
        --vision_tower openai/clip-vit-large-patch14-336 --weight_method EW --visatb_weights 1 1 ... \
        --output_dir checkpoints/run

Arguments, task list, weights and the whole data file are checked before any model is loaded; a problem
is one `error: ...` line on stderr and exit code 2. A run resumes from the newest `checkpoint-*` in
`--output_dir` on its own (unless --overwrite_output_dir).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence

import torch
import transformers

from llava.conversation import get_conv_template
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.train import resume
from llava.train.arguments import DataArguments, ModelArguments, TaskSetup, TrainingArguments, validate_args
from llava.train.data import DataScan, make_supervised_data_module, scan_data
from llava.train.dist_watch import DistWatch, is_distributed_failure
from llava.train.llava_trainer import LLaVATrainer
from llava.train.zero_utils import cast_new_trainables, fill_zero_auto_buckets, safe_save_model_for_hf_trainer

ATTENTION_IMPLEMENTATIONS = (None, "eager", "sdpa", "flash_attention_2")


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def rank0_print(*args) -> None:
    if is_main_process():
        print(*args, flush=True)


def parse_args(args: Sequence[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse the command line (or `args`) into LLaVA's three argument dataclasses."""
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(args=args, look_for_args_file=False)


def prepare_run(
    args: Sequence[str] | None = None,
) -> tuple[ModelArguments, DataArguments, TrainingArguments, TaskSetup, DataScan]:
    """Everything that is checked before a model is loaded: arguments, tasks, weights and the data file."""
    model_args, data_args, training_args = parse_args(args)
    setup = validate_args(model_args, data_args, training_args)
    scan = scan_data(
        data_args.data_path,
        data_args.image_folder,
        setup.tasks,
        default_task=data_args.default_task,
        skip_missing_images=data_args.skip_missing_images,
        single_task=setup.single_task,
        multimodal=bool(model_args.vision_tower),
    )
    return model_args, data_args, training_args, setup, scan


def planned_steps(training_args: TrainingArguments, scan: DataScan) -> int:
    """The optimizer steps this run will train (to tell a finished run from one to continue)."""
    return resume.planned_max_steps(
        len(scan.records), training_args.per_device_train_batch_size, training_args.world_size,
        training_args.gradient_accumulation_steps, training_args.num_train_epochs, training_args.max_steps,
    )  # fmt: skip


def find_all_linear_names(model: torch.nn.Module) -> list[str]:
    """Names of the language model's linear layers (LoRA targets); the vision side and lm_head are left out."""
    names = set()
    for name, module in model.named_modules():
        if any(key in name for key in ("mm_projector", "vision_tower", "vision_resampler")):
            continue
        if isinstance(module, torch.nn.Linear):
            names.add(name.split(".")[-1])
    names.discard("lm_head")
    return sorted(names)


def _quantization_kwargs(training_args: TrainingArguments, compute_dtype: torch.dtype) -> dict:
    if training_args.bits not in (4, 8):
        return {}
    from transformers import BitsAndBytesConfig

    return {
        "device_map": {"": training_args.device},
        "load_in_4bit": training_args.bits == 4,
        "load_in_8bit": training_args.bits == 8,
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=training_args.bits == 4,
            load_in_8bit=training_args.bits == 8,
            llm_int8_skip_modules=["mm_projector"],
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=training_args.double_quant,
            bnb_4bit_quant_type=training_args.quant_type,
        ),
    }


def _add_lora(model, training_args: TrainingArguments):
    from peft import LoraConfig, get_peft_model

    # No task_type: the CAUSAL_LM wrapper of peft swallows a `task_ids` argument (it is peft's own name for
    # multitask prompts), which would cut the weighted loss off from its task ids. The plain PeftModel
    # passes every argument through.
    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=find_all_linear_names(model),
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
    )
    if training_args.bits == 16:
        if training_args.bf16:
            model.to(torch.bfloat16)
        if training_args.fp16:
            model.to(torch.float16)
    rank0_print("[train] adding LoRA adapters")
    return get_peft_model(model, config)


def load_model_and_tokenizer(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
):
    """LLaVA's model set-up: language model, optional LoRA, tokenizer, vision tower and projector."""
    compute_dtype = torch.float16 if training_args.fp16 else torch.bfloat16 if training_args.bf16 else torch.float32
    model = LlavaLlamaForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        torch_dtype=torch.bfloat16 if training_args.bf16 else None,
        **_quantization_kwargs(training_args, compute_dtype),
    )
    model.config.use_cache = False
    if model_args.freeze_backbone:
        model.model.requires_grad_(False)
    if training_args.bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        model.config.torch_dtype = torch.bfloat16 if training_args.bf16 else torch.float32
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    if training_args.lora_enable:
        model = _add_lora(model, training_args)

    tokenizer = transformers.AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
        use_fast=False,
    )
    if tokenizer.unk_token is None:
        raise ValueError(f"the tokenizer of {model_args.model_name_or_path} has no unk token to pad with")
    tokenizer.pad_token = tokenizer.unk_token

    if model_args.vision_tower:
        model.get_model().initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp)
        vision_tower = model.get_vision_tower()
        vision_tower.to(dtype=compute_dtype, device=training_args.device)
        data_args.image_processor = vision_tower.image_processor
        data_args.is_multimodal = True
        data_args.image_token_count = vision_tower.num_patches + (vision_tower.select_feature == "cls_patch")

        config = model.config
        config.image_aspect_ratio = data_args.image_aspect_ratio
        config.tokenizer_padding_side = tokenizer.padding_side
        config.tokenizer_model_max_length = tokenizer.model_max_length
        config.tune_mm_mlp_adapter = training_args.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
        projector = model.get_model().mm_projector
        if model_args.tune_mm_mlp_adapter:
            model.requires_grad_(False)
            projector.requires_grad_(True)
        config.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
        if training_args.freeze_mm_mlp_adapter:
            projector.requires_grad_(False)
        if training_args.bits in (4, 8):
            projector.to(dtype=compute_dtype, device=training_args.device)
        config.mm_use_im_start_end = data_args.mm_use_im_start_end = model_args.mm_use_im_start_end
        config.mm_projector_lr = training_args.mm_projector_lr
        training_args.use_im_start_end = model_args.mm_use_im_start_end
        config.mm_use_im_patch_token = model_args.mm_use_im_patch_token
        model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)

    if training_args.deepspeed and training_args.bf16:
        cast_new_trainables(model, torch.bfloat16)

    if training_args.bits in (4, 8):
        from peft.tuners.lora import LoraLayer

        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and training_args.bf16:
                module.to(torch.bfloat16)
            if "norm" in name:
                module.to(torch.float32)
            if ("lm_head" in name or "embed_tokens" in name) and hasattr(module, "weight"):
                if training_args.bf16 and module.weight.dtype == torch.float32:
                    module.to(torch.bfloat16)
    return model, tokenizer


def _install_attention(attn_implementation: str | None) -> None:
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation {attn_implementation!r}; use one of "
            f"{', '.join(str(a) for a in ATTENTION_IMPLEMENTATIONS)}"
        )
    if attn_implementation in ("sdpa", "flash_attention_2"):
        from llava.train.llama_sdpa_attn_monkey_patch import replace_llama_attn_with_sdpa

        if replace_llama_attn_with_sdpa():
            rank0_print("[train] LLaMA attention runs through torch scaled_dot_product_attention")


def train(attn_implementation: str | None = None, args: Sequence[str] | None = None) -> None:
    """Run training from the command line (or `args`): validate, load, train, save."""
    try:
        _install_attention(attn_implementation)
        model_args, data_args, training_args, setup, scan = prepare_run(args)
        plan = resume.plan_resume(
            training_args.output_dir, training_args.overwrite_output_dir, planned_steps(training_args, scan),
            setup.weighter,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if plan.finished:
        rank0_print(plan.message)
        shut_down_distributed()
        return
    for warning in plan.warnings:
        if is_main_process():
            print(warning, file=sys.stderr, flush=True)

    watch = DistWatch.start()
    if watch is not None and is_main_process():
        try:
            print(f"[train] {watch.layout()}", flush=True)
        except Exception as error:  # a rank that never reports shows up in the first collective instead
            print(f"[train] not every rank reported its node: {error}", file=sys.stderr, flush=True)
    try:
        _train_and_save(model_args, data_args, training_args, setup, scan, plan)
    except Exception as error:
        if watch is None or not is_distributed_failure(error):
            raise
        message = watch.lost_contact_message(error)
        if message is None:
            print(f"[train] rank {watch.rank} on node {watch.node}: a collective failed while every rank still "
                  "answers: a step slower than the distributed timeout (VISATB_DIST_TIMEOUT / --ddp_timeout)?",
                  file=sys.stderr, flush=True)  # fmt: skip
            raise
        # A lost peer leaves the process groups unusable (a barrier or teardown would hang): report and leave.
        print(message, file=sys.stderr, flush=True)
        os._exit(1)
    if watch is not None:
        watch.stop()
    shut_down_distributed()


def _train_and_save(model_args, data_args, training_args, setup: TaskSetup, scan: DataScan, plan) -> None:
    """Load the model, train (resuming from `plan.checkpoint`), save; the caller tears distributed down."""
    rank0_print(scan.summary())
    if setup.single_task:
        rank0_print("[train] no task list (--task_names / --task_preset): every record trains as one task")
    weights = ", ".join(f"{t}={w:g}" for t, w in zip(setup.tasks, setup.weighter.current_weights()))
    rank0_print(f"[train] weight method {setup.weighter.name}; initial task weights: {weights}")

    # Seed before the model is built: the projector (and LoRA) initialisation happen here, before the
    # Trainer seeds its own RNG, so without this two runs with the same --seed start from different weights.
    transformers.set_seed(training_args.seed)
    model, tokenizer = load_model_and_tokenizer(model_args, data_args, training_args)
    fill_zero_auto_buckets(getattr(training_args, "hf_deepspeed_config", None), model.config.hidden_size)
    conv = get_conv_template(model_args.version)
    # Recorded so that loading picks the template the model was trained with, whatever its folder's name.
    model.config.conv_template = model_args.version
    data_module = make_supervised_data_module(scan, tokenizer, conv, data_args)
    trainer = LLaVATrainer(
        model=model, tokenizer=tokenizer, args=training_args, weighter=setup.weighter, **data_module
    )

    checkpoint = plan.checkpoint
    if checkpoint:
        rank0_print(f"[train] resuming from {checkpoint}")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_state()
    for line in trainer.truncation_report():
        if is_main_process():
            print(line, file=sys.stderr, flush=True)

    model.config.use_cache = True
    if training_args.lora_enable:
        trainer.save_model(training_args.output_dir)
    else:
        safe_save_model_for_hf_trainer(trainer, training_args.output_dir)
    if trainer.tokenization_mismatches:
        print(
            f"[train] {trainer.tokenization_mismatches} sample(s) on this rank had a tokenization mismatch; "
            "their targets were masked",
            file=sys.stderr,
            flush=True,
        )
    weights = ", ".join(f"{t}={w:.4g}" for t, w in zip(setup.tasks, setup.weighter.current_weights()))
    rank0_print(f"[train] done; final task weights: {weights}; saved to {training_args.output_dir}")
    # The DDP (or DeepSpeed) wrapper inside the trainer holds the process group; free it before tearing down.
    del trainer, model, data_module


def shut_down_distributed() -> None:
    """Wait for every rank, then destroy the process groups while the interpreter is still whole.

    gloo's worker threads free each finished collective themselves, and freeing a tensor that Python once
    held needs the GIL. Left to interpreter exit, such a thread can find Python shutting down and abort the
    rank ("terminate called without an active exception", SIGABRT) after training and saving went fine.
    Destroying the group joins those threads. The last reference must go from the group registry, whose
    release lets go of the GIL, not from a DDP reducer, whose release keeps it and so deadlocks with a
    thread waiting for it: hence the garbage collection first, of the wrapper the caller has dropped.
    The barrier keeps one rank from tearing down while another is still in a collective.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    gc.collect()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    train()
