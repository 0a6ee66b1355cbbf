"""A base model folder that is no full model is named before anything loads (projector-only, LoRA, tower)."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import make_toy_data, train_flags

from llava.folders import base_model_problem
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.train.train import train


def projector_only(folder):
    """What LLaVA's pretraining stage leaves: config.json, mm_projector.bin, trainer_state.json."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava", "hidden_size": 8}))
    torch.save({"model.mm_projector.0.weight": torch.zeros(2, 2)}, folder / "mm_projector.bin")
    (folder / "trainer_state.json").write_text("{}")
    return folder


def test_each_kind_of_folder_is_told_apart(tmp_path):
    assert "holds only a projector (mm_projector.bin) beside its config" in base_model_problem(
        projector_only(tmp_path / "pretrain"), "BASE_MODEL_PATH")
    bare = tmp_path / "bare"
    bare.mkdir()
    torch.save({}, bare / "mm_projector.bin")
    assert "holds only a projector (mm_projector.bin), as LLaVA's pretraining" in base_model_problem(bare, "X")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}")
    (lora / "config.json").write_text("{}")
    assert "is a LoRA adapter" in base_model_problem(lora, "X") and "merge_lora_weights.py" in base_model_problem(lora, "X")
    tower = tmp_path / "clip"
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    (tower / "pytorch_model.bin").write_bytes(b"")
    assert "is a vision tower (model_type 'clip_vision_model'): give it as VISION_TOWER" in base_model_problem(tower, "X")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("{not json")
    assert "config.json is not readable JSON" in base_model_problem(junk, "X")
    assert base_model_problem("lmsys/vicuna-7b-v1.5", "X") is None


def test_a_full_model_folder_passes(tiny_llava):
    assert base_model_problem(tiny_llava["base"], "X") is None
    assert base_model_problem(tiny_llava["full"], "X") is None


def test_training_from_a_projector_only_folder_stops_before_loading(tiny_llava, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(LlavaLlamaForCausalLM, "from_pretrained", refuse)
    data = make_toy_data(tmp_path / "data")
    base = projector_only(tmp_path / "llava-pretrain")
    flags = train_flags({**tiny_llava, "base": str(base)}, data, tmp_path / "out", "--max_steps", "1")
    with pytest.raises(SystemExit) as error:
        train(args=flags)
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert f"error: --model_name_or_path {base} holds only a projector (mm_projector.bin) beside its config" in err
