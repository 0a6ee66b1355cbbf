"""ZeRO-3-safe gathering for saving, against real DeepSpeed ZeRO-3 on the CPU with 2 ranks (torchrun)."""

import json

import pytest
import torch
from train_helpers import PYTHON, REPO, free_port, run_subprocess

from llava.model.llava_arch import load_projector_weights
from llava.train.zero_utils import (
    cast_new_trainables,
    fill_zero_auto_buckets,
    get_peft_state_maybe_zero_3,
    get_peft_state_non_lora_maybe_zero_3,
    maybe_zero_3,
)

# Each rank: a tiny LLaVA with LoRA, partitioned by deepspeed.initialize (ZeRO-3, no persistent parameters),
# then every gathering helper; rank 0 writes the full tensors from before partitioning and the gathered ones.
ZERO3_RANK = """
import json, os, sys
import deepspeed, torch
from peft import LoraConfig, get_peft_model
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.train import zero_utils
from llava.train.train import shut_down_distributed

checkpoint, out = sys.argv[1], sys.argv[2]
# Skip DeepSpeed's shared-memory all-reduce kernel: a JIT C++ build of about a minute; gloo does the collectives.
import importlib
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
deepspeed.init_distributed(dist_backend="gloo")
rank = int(os.environ["RANK"])
torch.manual_seed(0)
model = LlavaLlamaForCausalLM.from_pretrained(checkpoint)
model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
for name, param in model.named_parameters():
    if "lora_B" in name:
        torch.nn.init.normal_(param, std=0.5)  # non-zero, the same on both ranks (same seed)
    if "mm_projector" in name:
        param.requires_grad_(True)
expected = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k or "mm_projector" in k}
config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_allow_untested_optimizer": True,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
trainable = [p for p in model.parameters() if p.requires_grad]
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(trainable, lr=1e-3), config=config)
named = dict(engine.module.named_parameters())
projector_key = next(k for k in named if k.endswith("mm_projector.0.weight"))
local_sizes = {k: int(p.data.numel()) for k, p in named.items() if k in expected}
result = {
    "partitioned": all(zero_utils.is_zero3_param(named[k]) for k in expected),
    "local_sizes": local_sizes,
    "lora": zero_utils.get_peft_state_maybe_zero_3(named.items(), "none"),
    "non_lora": zero_utils.get_peft_state_non_lora_maybe_zero_3(named.items()),
    "adapter": zero_utils.get_mm_adapter_state_maybe_zero_3(named.items(), ["mm_projector"]),
    "single": {projector_key: zero_utils.maybe_zero_3(named[projector_key], ignore_status=True)},
}
zero_utils.save_projector(engine.module, os.path.join(out, "projector"), False, should_save=rank == 0)
torch.save({"expected": expected, **result}, os.path.join(out, f"rank{rank}.pt"))
shut_down_distributed()
"""


@pytest.fixture(scope="module")
def gathered(tiny_llava, tmp_path_factory):
    folder = tmp_path_factory.mktemp("zero3")
    script = folder / "zero3_rank.py"
    script.write_text(ZERO3_RANK)
    run_subprocess([PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                    str(script), tiny_llava["full"], str(folder)], {"DS_ACCELERATOR": "cpu"}, timeout=240)
    return folder, [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.slow
def test_parameters_were_really_partitioned(gathered):
    _, ranks = gathered
    for result in ranks:
        assert result["partitioned"]
        expected = result["expected"]
        # Each rank holds about half of every tensor, never the whole of it.
        assert all(result["local_sizes"][k] < expected[k].numel() for k in expected)


@pytest.mark.parametrize("kind", ["lora", "non_lora", "adapter", "single"])
@pytest.mark.slow
def test_gathered_tensors_have_full_shapes_and_values_on_every_rank(gathered, kind):
    _, ranks = gathered
    for result in ranks:
        expected, got = result["expected"], result[kind]
        assert got, kind
        want = {
            "lora": {k for k in expected if "lora_" in k},
            "non_lora": {k for k in expected if "mm_projector" in k},
            "adapter": {k for k in expected if "mm_projector" in k},
        }.get(kind)
        if want is not None:
            assert set(got) == want
        for key, tensor in got.items():
            assert tensor.shape == expected[key].shape and torch.equal(tensor, expected[key]), key


@pytest.mark.slow
def test_saved_projector_file_holds_full_tensors(gathered):
    folder, ranks = gathered
    weights = load_projector_weights(folder / "projector" / "mm_projector.bin")
    assert set(weights) == {f"{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    expected = {k.split("mm_projector.", 1)[1]: v for k, v in ranks[0]["expected"].items() if "mm_projector" in k}
    for key, tensor in weights.items():
        assert torch.equal(tensor, expected[key])
    assert json.loads((folder / "projector" / "config.json").read_text())["model_type"] == "llava"


def test_helpers_copy_plain_parameters_and_select_lora_biases():
    lora_a = torch.nn.Parameter(torch.ones(2, 3))
    params = {
        "layer.q_proj.lora_A.default.weight": lora_a,
        "layer.q_proj.bias": torch.nn.Parameter(torch.zeros(3)),
        "layer.k_proj.bias": torch.nn.Parameter(torch.zeros(3)),
        "mm_projector.0.weight": torch.nn.Parameter(torch.full((2, 2), 2.0)),
    }
    params["layer.k_proj.bias"].requires_grad_(False)
    copy = maybe_zero_3(lora_a)
    assert torch.equal(copy, lora_a) and copy.data_ptr() != lora_a.data_ptr() and not copy.requires_grad
    assert set(get_peft_state_maybe_zero_3(params.items(), "none")) == {"layer.q_proj.lora_A.default.weight"}
    assert set(get_peft_state_maybe_zero_3(params.items(), "lora_only")) == {
        "layer.q_proj.lora_A.default.weight", "layer.q_proj.bias"}
    assert len(get_peft_state_maybe_zero_3(params.items(), "all")) == 3
    assert set(get_peft_state_non_lora_maybe_zero_3(params.items())) == {"layer.q_proj.bias", "mm_projector.0.weight"}
    with pytest.raises(ValueError, match="unknown LoRA bias mode 'some'"):
        get_peft_state_maybe_zero_3(params.items(), "some")


def test_auto_buckets_become_integers_deepspeed_accepts():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from pydantic import ValidationError
    from transformers.deepspeed import HfTrainerDeepSpeedConfig

    as_transformers_fills = HfTrainerDeepSpeedConfig(str(REPO / "scripts_visatb" / "zero3.json"))
    as_transformers_fills.fill_only("zero_optimization.stage3_prefetch_bucket_size", 0.9 * 4096 * 4096)
    with pytest.raises(ValidationError, match="stage3_prefetch_bucket_size"):
        DeepSpeedZeroConfig(**as_transformers_fills.config["zero_optimization"])

    config = HfTrainerDeepSpeedConfig(str(REPO / "scripts_visatb" / "zero3.json"))
    filled = fill_zero_auto_buckets(config, 4096)
    assert filled == {"reduce_bucket_size": 4096 * 4096, "stage3_prefetch_bucket_size": 15099494,
                      "stage3_param_persistence_threshold": 40960}
    zero = DeepSpeedZeroConfig(**config.config["zero_optimization"])
    assert zero.prefetch_bucket_size == 15099494
    assert fill_zero_auto_buckets(config, 1024) == {}  # nothing left on "auto"
    assert fill_zero_auto_buckets(None, 4096) == {}


def test_new_trainable_modules_take_the_loaded_weights_dtype():
    model = torch.nn.ModuleDict({
        "lm": torch.nn.Linear(4, 4).to(torch.bfloat16),
        "mm_projector": torch.nn.Linear(3, 4),
        "frozen_tower": torch.nn.Linear(3, 3).requires_grad_(False),
    })
    cast = cast_new_trainables(model, torch.bfloat16)
    assert cast == ["mm_projector.weight", "mm_projector.bias"]
    assert {p.dtype for p in model["mm_projector"].parameters()} == {torch.bfloat16}
    assert model["frozen_tower"].weight.dtype == torch.float32
