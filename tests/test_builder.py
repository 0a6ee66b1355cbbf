import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from llava.model.tiny import build_tiny_llava


def _shared_keys_equal(model, reference):
    state = model.state_dict()
    shared = set(state) & set(reference)
    # Everything the checkpoint defines must come back (vision tower weights load separately).
    assert {k for k in reference if "vision_tower" not in k} <= shared
    for key in shared:
        torch.testing.assert_close(state[key], reference[key], msg=key)


@pytest.mark.parametrize("kind", ["projector", "lora"])
def test_checkpoint_kinds_with_a_base_round_trip(tmp_path, kind, capsys):
    written = build_tiny_llava(tmp_path, kind=kind)
    tokenizer, model, processor, context_len = load_pretrained_model(
        written[kind], written["base"], f"llava-tiny-{kind}", device="cpu"
    )
    printed = capsys.readouterr().out
    assert ("LoRA checkpoint" if kind == "lora" else "projector checkpoint") in printed
    _shared_keys_equal(model, written["reference_state"])
    assert processor is not None and context_len == 2048


def test_full_checkpoint_round_trip_and_generate(tiny_llava, capsys):
    tokenizer, model, processor, _ = load_pretrained_model(tiny_llava["full"], None, "llava-tiny", device="cpu")
    assert "full LLaVA checkpoint" in capsys.readouterr().out
    _shared_keys_equal(model, tiny_llava["reference_state"])
    assert next(model.parameters()).dtype == torch.float32 and model.device.type == "cpu"
    from llava.mm_utils import process_images

    pixels = process_images([Image.new("RGB", (20, 10), (0, 200, 0))], processor, model.config)
    ids = torch.tensor([[tokenizer.bos_token_id, IMAGE_TOKEN_INDEX, 5, 6]])
    out = model.generate(ids, images=pixels, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 3)


def test_device_mapped_load_puts_the_vision_tower_on_the_models_device_and_dtype(tiny_llava):
    # As upstream: with a device_map (or 8-/4-bit) the tower is moved to the model's device and dtype.
    _, model, processor, _ = load_pretrained_model(tiny_llava["full"], None, "llava-tiny", device_map="cpu",
                                                   torch_dtype=torch.bfloat16, verbose=False)  # fmt: skip
    tower = model.get_vision_tower()
    assert tower.device == model.get_model().mm_projector[0].weight.device == torch.device("cpu")
    assert tower.dtype == model.get_model().mm_projector[0].weight.dtype == torch.bfloat16
    _, reference, _, _ = load_pretrained_model(tiny_llava["full"], None, "llava-tiny", device="cpu", verbose=False)
    from llava.mm_utils import process_images

    pixels = process_images([Image.new("RGB", (20, 10), (0, 200, 0))], processor, model.config)
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, 6]])
    with torch.no_grad():
        mapped = model(input_ids=ids, images=pixels.to(torch.bfloat16)).logits.float()
        expected = reference(input_ids=ids, images=pixels).logits
    torch.testing.assert_close(mapped, expected, atol=0.05, rtol=0.05)  # bf16 vs fp32 of the same weights


def test_place_vision_tower_follows_the_projector_wherever_the_map_put_it(tiny_llava):
    from llava.model.builder import place_vision_tower

    _, model, _, _ = load_pretrained_model(tiny_llava["full"], None, "llava-tiny", device="cpu", verbose=False)
    model.get_model().mm_projector.to("meta")  # stands in for a GPU a device_map chose
    place_vision_tower(model, torch.float16)
    tower_params = list(model.get_vision_tower().parameters())
    assert tower_params and all(p.device.type == "meta" and p.dtype == torch.float16 for p in tower_params)


def test_config_model_type_marks_a_folder_without_llava_in_its_name(tiny_llava, tmp_path, capsys):
    renamed = tmp_path / "my-model"
    shutil.copytree(tiny_llava["full"], renamed)
    _, model, processor, _ = load_pretrained_model(str(renamed), None, "my-model", device="cpu")
    assert "model_type 'llava'" in capsys.readouterr().out
    assert processor is not None


def test_folder_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_pretrained_model(str(tmp_path / "empty"), None, "llava-empty", device="cpu")


def test_projector_with_wrong_shapes_names_the_tensor(tmp_path):
    written = build_tiny_llava(tmp_path, kind="projector")
    projector_file = tmp_path / "llava-tiny-projector" / "mm_projector.bin"
    state = torch.load(projector_file, weights_only=True)
    state["model.mm_projector.0.weight"] = torch.zeros(3, 3)
    torch.save(state, projector_file)
    with pytest.raises(ValueError, match=r"'0.weight'.*shape \(3, 3\).*expects \(64, 32\)"):
        load_pretrained_model(written["projector"], written["base"], "llava-tiny-projector", device="cpu")


def test_pretrained_projector_is_loaded_by_initialize_vision_modules(tmp_path, tiny_llava):
    import types

    from llava.model import LlavaLlamaForCausalLM

    projector_file = tmp_path / "mm_projector.bin"
    reference = tiny_llava["reference_state"]
    torch.save({k: v * 2 for k, v in reference.items() if "mm_projector" in k}, projector_file)
    model = LlavaLlamaForCausalLM.from_pretrained(tiny_llava["base"])
    args = types.SimpleNamespace(
        vision_tower=tiny_llava["vision_tower"], mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        mm_projector_type="mlp2x_gelu", pretrain_mm_mlp_adapter=str(projector_file),
    )
    model.get_model().initialize_vision_modules(args)
    torch.testing.assert_close(
        model.get_model().mm_projector[0].weight, reference["model.mm_projector.0.weight"] * 2
    )
    assert model.config.mm_hidden_size == 32 and model.config.mm_projector_type == "mlp2x_gelu"
    args.mm_projector_type = "linear"
    fresh = LlavaLlamaForCausalLM.from_pretrained(tiny_llava["base"])
    with pytest.raises(ValueError, match="missing .*'bias', 'weight'.*unexpected"):
        fresh.get_model().initialize_vision_modules(args)


def test_tiny_checkpoint_tokenizer_follows_llama_conventions(tiny_llava):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llava["full"], use_fast=False)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer("hi").input_ids[0] == 1
    config = json.loads(tiny_llava and open(f"{tiny_llava['full']}/config.json").read())
    assert config["model_type"] == "llava" and config["mm_projector_type"] == "mlp2x_gelu"


HUB_LOAD = """
import json, sys, torch
from llava.model.builder import load_pretrained_model
hub_id, local, base = sys.argv[1:4]
_, from_hub, _, _ = load_pretrained_model(hub_id, base, "llava-tiny-lora", device="cpu", verbose=False)
_, from_folder, _, _ = load_pretrained_model(local, base, "llava-tiny-lora", device="cpu", verbose=False)
a, b = from_hub.state_dict(), from_folder.state_dict()
print(json.dumps({"same_keys": sorted(a) == sorted(b), "max_diff": max((a[k] - b[k]).abs().max().item() for k in a),
                  "projector": from_hub.get_model().mm_projector[0].weight[0, :3].tolist()}))
"""


def fake_hub_cache(cache: Path, repo_id: str, files_from: Path) -> None:
    """huggingface_hub's cache layout for one model repo: refs/main names a snapshot holding the files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(files_from, repo / "snapshots" / commit)


@pytest.mark.slow
def test_lora_checkpoint_given_as_a_hub_id_loads_from_the_hub_cache(tmp_path):
    import subprocess
    import sys

    written = build_tiny_llava(tmp_path / "tiny", kind="lora")
    # HF_HOME is read by both transformers 4.31 and huggingface_hub (HF_HUB_CACHE only by the latter).
    fake_hub_cache(tmp_path / "hf_home" / "hub", "visatb-test/llava-tiny-lora", Path(written["lora"]))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", HUB_LOAD, "visatb-test/llava-tiny-lora", written["lora"],
                           written["base"]], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["same_keys"] and result["max_diff"] == 0.0
    saved = torch.load(Path(written["lora"]) / "non_lora_trainables.bin", weights_only=True)
    projector = next(v for k, v in saved.items() if k.endswith("mm_projector.0.weight"))
    assert result["projector"] == pytest.approx(projector[0, :3].tolist())


def test_lora_hub_id_that_cannot_be_fetched_is_a_clear_error(tmp_path, monkeypatch):
    from llava.model import builder

    monkeypatch.setattr(builder, "_hub_file", lambda repo_id, filename: None)  # offline, nothing cached
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub repository whose non_lora"):
        builder.lora_checkpoint_folder("nobody/not-cached-llava-lora")
    (tmp_path / "llava-lora").mkdir()
    with pytest.raises(FileNotFoundError, match="non_lora_trainables.bin is missing"):
        builder.lora_checkpoint_folder(str(tmp_path / "llava-lora"))
