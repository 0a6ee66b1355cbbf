"""Weighted training end to end on the tiny LLaVA: loss wiring, every method, logs, checkpoints, resume,
LoRA, projector pretraining and the finetune script's CPU fallback."""

import json
import os
import runpy
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from train_helpers import REPO, TASKS, make_toy_data, run_subprocess, step_logs, train_flags, write_projector
from transformers import AutoTokenizer, CLIPImageProcessor, LlamaForCausalLM

from llava.constants import IGNORE_INDEX
from llava.conversation import get_conv_template
from llava.model.builder import load_pretrained_model
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.model.weight_methods import build_weighter
from llava.train.arguments import TrainingArguments
from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, scan_data
from llava.train.llama_sdpa_attn_monkey_patch import restore_llama_attention, sdpa_installed
from llava.train.llava_trainer import LLaVATrainer
from llava.train.train import train

# Tiny models gain nothing from more threads (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tiny_llava, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_train")
    projector = write_projector(tiny_llava["reference_state"], folder / "pretrain" / "mm_projector.bin")
    return {**tiny_llava, "projector": projector}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("toy_e2e"))


@pytest.fixture(scope="module")
def model(tiny_llava):
    llava = LlavaLlamaForCausalLM.from_pretrained(tiny_llava["full"]).eval()
    llava.get_vision_tower().load_model()
    return llava


@pytest.fixture(scope="module")
def text_batch(tiny_llava):
    """Three text-only samples of different lengths (tasks 0, 2, 0), right-padded, prompt tokens masked."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava["base"], use_fast=False)
    texts = ["one two three four five", "A red circle in the top left corner.", "yes no"]
    ids = [torch.tensor(tokenizer(t).input_ids) for t in texts]
    input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=0)
    lengths = torch.tensor([len(x) for x in ids])
    attention_mask = torch.arange(input_ids.shape[1])[None] < lengths[:, None]
    labels = input_ids.masked_fill(~attention_mask, IGNORE_INDEX)
    labels[:, :2] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "task_ids": torch.tensor([0, 2, 0])}


def per_token_loss(logits, labels):
    """Next-token cross-entropy per position, computed here independently of the model's reduction."""
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    loss = F.cross_entropy(shift_logits.reshape(-1, logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none").view(shift_labels.shape)
    return loss, shift_labels != IGNORE_INDEX


def forward_loss(model, batch, weighter):
    model.weighter = weighter
    try:
        with torch.no_grad():
            return model(**batch)
    finally:
        model.weighter = None


# -- loss wiring through the real model forward ----------------------------------------------------


def test_ew_loss_equals_the_standard_causal_lm_loss(model, tiny_llava, text_batch):
    reference = LlamaForCausalLM.from_pretrained(tiny_llava["base"]).eval()
    with torch.no_grad():
        standard = reference(input_ids=text_batch["input_ids"], attention_mask=text_batch["attention_mask"],
                             labels=text_batch["labels"]).loss
    ew = forward_loss(model, text_batch, build_weighter("EW", 3, TASKS)).loss
    plain = forward_loss(model, {k: v for k, v in text_batch.items() if k != "task_ids"}, None).loss
    assert torch.allclose(ew, standard, atol=1e-6) and torch.allclose(plain, standard, atol=1e-6)


def test_token_balanced_weights_match_hand_reduction(model, text_batch):
    out = forward_loss(model, text_batch, build_weighter("EW", 3, TASKS, weights=[3.0, 1.0, 0.5]))
    token_loss, mask = per_token_loss(out.logits, text_batch["labels"])
    w = torch.tensor([3.0, 0.5, 3.0])[:, None]  # weights of the samples' tasks 0, 2, 0
    expected = (w * token_loss * mask).sum() / (w * mask).sum()
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_task_balanced_loss_matches_hand_reduction(model, text_batch):
    out = forward_loss(model, text_batch, build_weighter("EWTB", 3, TASKS, weights=[2.0, 7.0, 1.0]))
    token_loss, mask = per_token_loss(out.logits, text_batch["labels"])
    task0 = (token_loss[[0, 2]] * mask[[0, 2]]).sum() / mask[[0, 2]].sum()
    task2 = (token_loss[1] * mask[1]).sum() / mask[1].sum()
    # task 1 is absent from the batch: no loss, but its weight 7 stays in the denominator (the release's)
    expected = (2.0 * task0 + 1.0 * task2) / 10.0
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_trainer_passes_task_ids_to_the_model_and_the_weighter(model, tiny_llava, toy, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava["base"], use_fast=False, model_max_length=256)
    tokenizer.pad_token = tokenizer.unk_token
    processor = CLIPImageProcessor.from_pretrained(tiny_llava["vision_tower"])
    data_args = type("DataArgs", (), {"image_folder": toy["images"], "image_processor": processor,
                                      "image_aspect_ratio": "pad", "is_multimodal": True})()
    dataset = LazySupervisedDataset(scan_data(toy["data"], toy["images"], TASKS), tokenizer,
                                    get_conv_template("v1"), data_args)
    batch = DataCollatorForSupervisedDataset(tokenizer)([dataset[i] for i in range(len(dataset))])
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True)

    def trainer_loss(weights):
        weighter = build_weighter("EW", 3, TASKS, weights=weights)
        trainer = LLaVATrainer(model=model, args=args, weighter=weighter)
        loss = trainer.compute_loss(model, dict(batch))
        model.weighter = None
        return loss, weighter

    equal, _ = trainer_loss([1.0, 1.0, 1.0])
    skewed, weighter = trainer_loss([5.0, 1.0, 0.0])
    assert not torch.allclose(equal, skewed)
    # The same batch through the model, reduced by hand with the batch's task ids.
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k not in ("task_ids", "tokenization_mismatches", "truncated_samples")}).logits
    labels = model.prepare_inputs_labels_for_multimodal(batch["input_ids"], None, batch["attention_mask"], None,
                                                        batch["labels"], batch["images"])[5]
    token_loss, mask = per_token_loss(logits, labels)
    w = torch.tensor([5.0, 1.0, 0.0])[batch["task_ids"]][:, None]
    assert torch.allclose(skewed, (w * token_loss * mask).sum() / (w * mask).sum(), atol=1e-5)
    weighter.step(1)
    assert set(weighter.log_stats()) >= {f"loss_{t}" for t in TASKS} | {f"weight_{t}" for t in TASKS}


# -- training runs -------------------------------------------------------------------------------------


METHODS = {
    "EW": [],
    "VisATB": ["--visatb_weights", "2", "0.5", "1"],
    "EWTB": [],
    "TLA": [],
    "RLW": ["--weighter_seed", "3"],
    "DWA": ["--weight_method_args", "window=2"],
    "IGB": ["--weight_method_args", "window=2"],
}


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.slow
def test_every_method_trains_and_lowers_each_tasks_loss(name, tiny, toy, tmp_path):
    method = "EW" if name == "VisATB" else name
    train(args=train_flags(tiny, toy, tmp_path / name, "--weight_method", method, "--max_steps", "8",
                           "--save_strategy", "no", *METHODS[name]))
    logs = step_logs(tmp_path / name)
    assert [entry["step"] for entry in logs] == list(range(1, 9))
    for task in TASKS:
        assert all(f"loss_{task}" in entry and f"weight_{task}" in entry for entry in logs)
        assert logs[-1][f"loss_{task}"] < logs[0][f"loss_{task}"] - 0.05, (task, logs[0], logs[-1])
    weights = [tuple(entry[f"weight_{t}"] for t in TASKS) for entry in logs]
    if name == "VisATB":
        assert set(weights) == {(2.0, 0.5, 1.0)}
    elif name in ("EW", "EWTB", "TLA"):
        assert set(weights) == {(1.0, 1.0, 1.0)}
    else:  # dynamic: the weights moved, and always sum to the number of tasks
        assert len(set(weights)) > 1
        assert all(abs(sum(w) - 3.0) < 1e-9 for w in weights)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_run_even_with_a_fresh_projector(tiny, toy, tmp_path):
    # The projector is initialised when the model is built, before the Trainer seeds; train() seeds first.
    fresh = {k: v for k, v in tiny.items() if k != "projector"}
    runs = []
    for name in ("a", "b"):
        torch.manual_seed(len(name) + len(runs))  # a different global RNG state before each run
        train(args=train_flags(fresh, toy, tmp_path / name, "--max_steps", "3", "--save_strategy", "no"))
        runs.append([entry["loss"] for entry in step_logs(tmp_path / name)])
    assert len(runs[0]) == 3 and runs[0] == runs[1]


def main_run_flags(tiny, data, output_dir, max_steps):
    return train_flags(tiny, data, output_dir, "--visatb_weights", "2", "0.5", "1", "--max_steps", str(max_steps),
                       "--save_steps", "2", "--per_device_train_batch_size", "4")


@pytest.fixture(scope="module")
def mismatch_data(toy, tmp_path_factory):
    """The toy data plus one record whose reply holds a literal </s> (a tokenization mismatch)."""
    records = json.loads(open(toy["data"]).read())
    records.append({"id": "odd", "task": "Text", "conversations": [
        {"from": "human", "value": "Spell it."}, {"from": "gpt", "value": "a</s>b"}]})
    path = tmp_path_factory.mktemp("mismatch") / "train.json"
    path.write_text(json.dumps(records))
    return {"data": str(path), "images": toy["images"]}


@pytest.fixture(scope="module")
def main_run(tiny, mismatch_data, tmp_path_factory):
    """VisATB weights, 4 steps, checkpoints every 2 steps."""
    output_dir = tmp_path_factory.mktemp("main_run") / "llava-tiny-visatb"
    train(args=main_run_flags(tiny, mismatch_data, output_dir, 4))
    return output_dir


@pytest.mark.slow
def test_logs_carry_per_task_loss_and_weight_at_every_logging_step(main_run):
    logs = step_logs(main_run)
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4]
    for entry in logs:
        assert {entry[f"weight_{t}"] for t in TASKS} == {2.0, 0.5, 1.0}
        assert entry["weight_ColorQA"] == 2.0 and entry["weight_Caption"] == 0.5
        assert any(f"loss_{t}" in entry for t in TASKS)
    assert logs[-1]["tokenization_mismatches"] >= 1


@pytest.mark.slow
def test_checkpoints_hold_the_model_and_the_weighter_state(main_run, tiny):
    for step in (2, 4):
        folder = main_run / f"checkpoint-{step}"
        assert (folder / "pytorch_model.bin").is_file() and (folder / "optimizer.pt").is_file()
        state = json.loads((folder / "weighter_state.json").read_text())
        assert state["num_steps"] == step and state["task_names"] == TASKS
    _, model, processor, _ = load_pretrained_model(str(main_run), None, "llava-tiny-visatb", device="cpu",
                                                   verbose=False)
    initial = torch.load(tiny["projector"], weights_only=True)
    trained = model.get_model().mm_projector[0].weight
    assert trained.shape == initial["model.mm_projector.0.weight"].shape
    assert not torch.allclose(trained, initial["model.mm_projector.0.weight"])
    assert processor is not None


@pytest.mark.slow
def test_rerun_resumes_from_the_newest_checkpoint_like_an_uninterrupted_run(main_run, tiny, mismatch_data,
                                                                            tmp_path, capsys):
    resumed_dir = tmp_path / "resumed"
    os.symlink(main_run, resumed_dir)  # the same output_dir, run again with more steps
    capsys.readouterr()
    train(args=main_run_flags(tiny, mismatch_data, resumed_dir, 6))
    assert f"resuming from {resumed_dir}/checkpoint-4" in capsys.readouterr().out
    resumed = step_logs(resumed_dir)
    assert [entry["step"] for entry in resumed] == [1, 2, 3, 4, 5, 6]

    train(args=main_run_flags(tiny, mismatch_data, tmp_path / "straight", 6))
    straight = step_logs(tmp_path / "straight")
    for a, b in zip(resumed[4:], straight[4:]):
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)
        for task in TASKS:
            if f"loss_{task}" in b:
                assert abs(a[f"loss_{task}"] - b[f"loss_{task}"]) < 1e-4


@pytest.mark.slow
def test_lora_training_saves_and_merges_through_load_pretrained_model(tiny, toy, tmp_path):
    lora_dir = tmp_path / "llava-tiny-lora"
    try:
        # train_mem's SDPA attention, with LoRA
        train(attn_implementation="sdpa", args=train_flags(
            tiny, toy, lora_dir, "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8",
            "--lora_dropout", "0", "--max_steps", "3", "--save_strategy", "no", "--visatb_weights", "1", "2", "1"))
        assert sdpa_installed()
    finally:
        restore_llama_attention()
    for name in ("adapter_model.bin", "adapter_config.json", "non_lora_trainables.bin", "config.json"):
        assert (lora_dir / name).is_file(), name
    # Per-task losses are logged only when task ids reached the model's loss through the PEFT wrapper.
    assert all("loss_ColorQA" in entry and entry["weight_Caption"] == 2.0 for entry in step_logs(lora_dir))

    merged_dir = tmp_path / "llava-tiny-merged"
    argv = sys.argv
    sys.argv = ["merge_lora_weights.py", "--model-path", str(lora_dir), "--model-base", tiny["base"],
                "--save-model-path", str(merged_dir)]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(REPO / "scripts_visatb" / "merge_lora_weights.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert done.value.code == 0

    _, from_lora, _, _ = load_pretrained_model(str(lora_dir), tiny["base"], "llava-tiny-lora", device="cpu",
                                               verbose=False)
    _, merged, _, _ = load_pretrained_model(str(merged_dir), None, "llava-tiny-merged", device="cpu",
                                            verbose=False)
    base = LlamaForCausalLM.from_pretrained(tiny["base"])
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged.state_dict()[q_proj], base.state_dict()[q_proj])  # LoRA was trained
    non_lora = torch.load(lora_dir / "non_lora_trainables.bin", weights_only=True)
    projector_key = next(k for k in non_lora if k.endswith("mm_projector.0.weight"))
    assert torch.equal(merged.get_model().mm_projector[0].weight, non_lora[projector_key])
    image = CLIPImageProcessor.from_pretrained(tiny["vision_tower"])(Image.new("RGB", (32, 32), (200, 20, 20)),
                                                                     return_tensors="pt")["pixel_values"]
    input_ids = torch.tensor([[1, 5, -200, 9, 12]])
    with torch.no_grad():
        assert torch.allclose(from_lora(input_ids=input_ids, images=image).logits,
                              merged(input_ids=input_ids, images=image).logits, atol=1e-5)


@pytest.fixture(scope="module")
def caption_data(toy, tmp_path_factory):
    """LLaVA's pretraining format: one <image> question and its caption (no task field)."""
    records = [{"id": f"p{i}", "image": f"{color}.png", "conversations": [
        {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
        {"from": "gpt", "value": f"a {color} square"}]} for i, color in enumerate(("red", "green", "blue"))]
    path = tmp_path_factory.mktemp("pretrain_data") / "captions.json"
    path.write_text(json.dumps(records))
    return {"data": str(path), "images": toy["images"]}


def pretrain_flags(tiny, data, output_dir, max_steps):
    flags = train_flags({k: v for k, v in tiny.items() if k != "projector"}, data, output_dir,
                        "--version", "plain", "--tune_mm_mlp_adapter", "True", "--max_steps", str(max_steps),
                        "--save_steps", "2", "--per_device_train_batch_size", "3")
    at = flags.index("--task_names")
    return flags[:at] + flags[at + 2:]


@pytest.mark.slow
def test_pretraining_saves_only_the_projector_and_resumes(tiny, caption_data, tmp_path, capsys):
    output_dir = tmp_path / "llava-tiny-pretrain"
    train(args=pretrain_flags(tiny, caption_data, output_dir, 2))
    assert (output_dir / "mm_projector.bin").is_file() and (output_dir / "config.json").is_file()
    assert not (output_dir / "pytorch_model.bin").exists()
    checkpoint = output_dir / "checkpoint-2"
    assert (checkpoint / "mm_projector.bin").is_file() and not (checkpoint / "pytorch_model.bin").exists()

    saved = torch.load(output_dir / "mm_projector.bin", weights_only=True)
    assert set(saved) == {f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    _, model, _, _ = load_pretrained_model(str(output_dir), tiny["base"], "llava-tiny-pretrain", device="cpu",
                                           verbose=False)
    assert torch.equal(model.get_model().mm_projector[2].weight, saved["model.mm_projector.2.weight"])
    initial = tiny["reference_state"]["model.mm_projector.2.weight"]
    assert not torch.allclose(saved["model.mm_projector.2.weight"], initial)

    capsys.readouterr()
    train(args=pretrain_flags(tiny, caption_data, output_dir, 3))
    assert "resuming from" in capsys.readouterr().out
    assert [entry["step"] for entry in step_logs(output_dir)] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.e2e
def test_finetune_script_runs_on_cpu_with_the_tiny_model(tiny, toy, tmp_path):
    output_dir = tmp_path / "script_run"
    env = {
        "NUM_GPUS": "0", "BASE_MODEL_PATH": tiny["base"], "DATA_PATH": toy["data"], "IMAGE_FOLDER": toy["images"],
        "VISION_TOWER": tiny["vision_tower"], "PRETRAIN_MM_MLP_ADAPTER": tiny["projector"],
        "TASK_NAMES": ",".join(TASKS), "WEIGHT_METHOD": "EW", "VISATB_WEIGHTS": "1.5 0.5 1", "OUTPUT_DIR": str(output_dir),
    }
    result = run_subprocess(["bash", "scripts_visatb/finetune_academic.sh", "--max_steps", "2",
                             "--per_device_train_batch_size", "3", "--model_max_length", "256",
                             "--save_strategy", "no", "--disable_tqdm", "True"], env)
    assert "falling back to the CPU" in result.stderr
    assert "--gradient_checkpointing True" in result.stderr and "--learning_rate 2e-5" in result.stderr
    logs = step_logs(output_dir)
    assert [entry["step"] for entry in logs] == [1, 2]
    assert logs[0]["weight_ColorQA"] == 1.5 and logs[0]["learning_rate"] <= 2e-5
    assert (output_dir / "pytorch_model.bin").is_file()
