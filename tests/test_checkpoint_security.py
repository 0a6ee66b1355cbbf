"""No code runs from a checkpoint file: pickled files are read with torch's restricted unpickler first.

A planted file (its pickle names a function to call, here `os.system`) makes its checkpoint "refused": the run
falls back to the previous checkpoint, as for a truncated file, and the payload never runs.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llava.train import resume
from llava.train.llava_trainer import LLaVATrainer


class Payload:
    """Unpickling this with the full unpickler runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    torch.save({"python": Payload(marker), "cpu": torch.zeros(2)}, path)


def rng_state() -> dict:
    """What the Trainer saves as rng_state.pth on a CPU run."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}


def make_checkpoint(run: Path, step: int) -> Path:
    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 6}))
    torch.save({"w": torch.ones(3)}, folder / "pytorch_model.bin")
    torch.save({"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.zeros(3)}},
                "param_groups": [{"lr": 1e-3, "params": [0]}]}, folder / "optimizer.pt")  # fmt: skip
    torch.save(rng_state(), folder / "rng_state.pth")
    # The Trainer pickles its arguments in full here and never reads them back: not a reason to refuse.
    torch.save(SimpleNamespace(lr=1e-3), folder / "training_args.bin")
    return folder


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "run"
    make_checkpoint(folder, 2)
    make_checkpoint(folder, 4)
    return folder


def test_the_planted_payload_is_live(tmp_path):
    # The fixture the other tests plant really runs code under the full unpickler (what DeepSpeed uses).
    marker = tmp_path / "ran"
    plant(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["rng_state.pth", "optimizer.pt", "scheduler.pt", "pytorch_model.bin"])
def test_a_planted_file_in_the_newest_checkpoint_falls_back_to_the_previous_one(run, tmp_path, name):
    marker = tmp_path / "ran"
    plant(run / "checkpoint-4" / name, marker)
    plan = resume.plan_resume(str(run), overwrite_output_dir=False, planned_steps=6)
    assert plan.checkpoint == str(run / "checkpoint-2")
    assert len(plan.warnings) == 1
    assert f"checkpoint-4 is damaged: {name} was refused: it names posix.system" in plan.warnings[0]
    assert not marker.exists()


def test_every_checkpoint_planted_is_an_error_naming_them(run, tmp_path):
    marker = tmp_path / "ran"
    plant(run / "checkpoint-4" / "rng_state.pth", marker)
    plant(run / "checkpoint-2" / "optimizer.pt", marker)
    with pytest.raises(ValueError, match="every checkpoint in") as error:
        resume.plan_resume(str(run), overwrite_output_dir=False, planned_steps=6)
    assert "rng_state.pth was refused" in str(error.value) and "optimizer.pt was refused" in str(error.value)
    assert not marker.exists()


def test_a_clean_checkpoint_with_numpy_rng_state_is_accepted(run):
    plan = resume.plan_resume(str(run), overwrite_output_dir=False, planned_steps=6)
    assert plan.checkpoint == str(run / "checkpoint-4") and plan.warnings == []


def test_the_rng_state_is_restored_with_the_restricted_unpickler(tmp_path):
    np.random.seed(123)
    random.seed(5)
    torch.manual_seed(7)
    torch.save(rng_state(), tmp_path / "rng_state.pth")
    expected = (np.random.rand(3), random.random(), torch.rand(3))
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    trainer = SimpleNamespace(args=SimpleNamespace(world_size=1, process_index=0))
    LLaVATrainer._load_rng_state(trainer, str(tmp_path))
    assert np.array_equal(np.random.rand(3), expected[0])
    assert random.random() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


def test_loading_a_planted_rng_state_directly_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    plant(tmp_path / "rng_state.pth", marker)
    trainer = SimpleNamespace(args=SimpleNamespace(world_size=1, process_index=0))
    with pytest.raises(pickle.UnpicklingError):
        LLaVATrainer._load_rng_state(trainer, str(tmp_path))
    assert not marker.exists()


def deepspeed_checkpoint(folder: Path) -> Path:
    """The files DeepSpeed's ZeRO save writes, with the classes a real ZeRO-2/3 optimizer state holds."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    step_dir = folder / "global_step4"
    step_dir.mkdir()
    (folder / "latest").write_text("global_step4")
    torch.save({"module": {"w": torch.ones(2)}, "ds_version": "0.19.8"},
               step_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt")  # fmt: skip
    optimizer = {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.weights,
                 "param_slice_mappings": [{"w": fragment_address(numel=2, start=0)}], "fp32": torch.zeros(2)}  # fmt: skip
    torch.save({"optimizer_state_dict": optimizer}, step_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return step_dir


def test_a_deepspeed_checkpoint_is_checked_before_deepspeed_reads_it(run, tmp_path):
    step_dir = deepspeed_checkpoint(run / "checkpoint-4")
    assert resume.plan_resume(str(run), False, 6).checkpoint == str(run / "checkpoint-4")

    marker = tmp_path / "ran"
    plant(step_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    plan = resume.plan_resume(str(run), False, 6)
    assert plan.checkpoint == str(run / "checkpoint-2")
    assert "global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt was refused" in plan.warnings[0]
    assert not marker.exists()


def test_a_latest_tag_outside_the_checkpoint_is_refused(run):
    deepspeed_checkpoint(run / "checkpoint-4")
    (run / "checkpoint-4" / "latest").write_text("../../elsewhere")
    plan = resume.plan_resume(str(run), False, 6)
    assert plan.checkpoint == str(run / "checkpoint-2")
    assert "latest names '../../elsewhere'" in plan.warnings[0]


def test_a_file_that_is_not_a_torch_archive_is_refused(run):
    (run / "checkpoint-4" / "optimizer.pt").write_bytes(pickle.dumps({"lr": 1.0}))
    plan = resume.plan_resume(str(run), False, 6)
    assert plan.checkpoint == str(run / "checkpoint-2")
    assert "optimizer.pt is not a readable torch.save archive" in plan.warnings[0]
