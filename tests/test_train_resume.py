"""Rerunning a training: a finished run is not trained again, a damaged newest checkpoint falls back or is named."""

from __future__ import annotations

import json
import shutil

import pytest
from train_helpers import make_toy_data, step_logs, train_flags, write_projector

from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.train import resume
from llava.train.train import train

# Every test reruns a real training of the tiny model (one torch thread, tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def tiny(tiny_llava, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_resume")
    return {**tiny_llava, "projector": write_projector(tiny_llava["reference_state"], folder / "mm_projector.bin")}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("toy_resume"))


def flags(tiny, toy, output_dir, steps: int) -> list[str]:
    return train_flags(tiny, toy, output_dir, "--max_steps", str(steps), "--save_strategy", "steps", "--save_steps",
                       "2", "--save_total_limit", "5", "--weight_method", "DWA", "--weight_method_args", "window=2")  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tiny, toy, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("finished") / "run"
    train(args=flags(tiny, toy, output_dir, 4))
    return output_dir


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(LlavaLlamaForCausalLM, "from_pretrained", refuse)


def copy_run(finished_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target


def test_rerunning_a_finished_training_does_not_train_again(finished_run, tiny, toy, tmp_path, capsys, no_model_load):
    run = copy_run(finished_run, tmp_path)
    before = (run / "trainer_state.json").read_text()
    capsys.readouterr()
    train(args=flags(tiny, toy, run, 4))
    out = capsys.readouterr().out
    assert f"{run} already holds a finished run (step 4 of 4," in out and "--overwrite_output_dir" in out
    assert (run / "trainer_state.json").read_text() == before
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_a_corrupt_weighter_state_falls_back_to_the_previous_checkpoint(finished_run, tiny, toy, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    (run / "checkpoint-4" / "weighter_state.json").write_text('{"method": "DWA", "num_st')
    capsys.readouterr()
    train(args=flags(tiny, toy, run, 6))
    captured = capsys.readouterr()
    assert "checkpoint-4 is damaged" in captured.err and "weighter_state.json" in captured.err
    assert f"resuming from {run}/checkpoint-2" in captured.out
    assert [entry["step"] for entry in step_logs(run)] == [1, 2, 3, 4, 5, 6]


def test_a_truncated_newest_checkpoint_falls_back_and_all_damaged_is_an_error(finished_run, tiny, toy, tmp_path,
                                                                              capsys, no_model_load):  # fmt: skip
    run = copy_run(finished_run, tmp_path)
    weights = run / "checkpoint-4" / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    plan = resume.plan_resume(str(run), overwrite_output_dir=False, planned_steps=6, weighter=None)
    assert plan.checkpoint == str(run / "checkpoint-2") and not plan.finished
    assert any("checkpoint-4 is damaged: pytorch_model.bin is truncated or corrupt" in w for w in plan.warnings)

    state = run / "checkpoint-2" / "trainer_state.json"
    state.write_text("{")
    with pytest.raises(SystemExit) as error:
        train(args=flags(tiny, toy, run, 6))
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert "every checkpoint in" in err and "checkpoint-2 is damaged: trainer_state.json" in err
    assert "--overwrite_output_dir" in err


def test_a_weighter_state_of_another_method_is_named_before_loading(finished_run, tmp_path):
    from llava.model.weight_methods import build_weighter

    run = copy_run(finished_run, tmp_path)
    state = json.loads((run / "checkpoint-4" / "weighter_state.json").read_text())
    (run / "checkpoint-4" / "weighter_state.json").write_text(json.dumps({**state, "method": "RLW"}))
    plan = resume.plan_resume(str(run), False, 6, build_weighter("DWA", 3, ["ColorQA", "Caption", "Text"]))
    assert plan.checkpoint.endswith("checkpoint-2")
    assert "weighter state is for method 'RLW'" in plan.warnings[0]


def test_a_planted_rng_state_never_runs_and_training_resumes_from_the_previous_checkpoint(finished_run, tiny, toy,
                                                                                         tmp_path, capsys):  # fmt: skip
    from test_checkpoint_security import plant

    run = copy_run(finished_run, tmp_path)
    marker = tmp_path / "payload_ran"
    plant(run / "checkpoint-4" / "rng_state.pth", marker)
    capsys.readouterr()
    train(args=flags(tiny, toy, run, 6))
    captured = capsys.readouterr()
    assert "checkpoint-4 is damaged: rng_state.pth was refused: it names posix.system" in captured.err
    assert f"resuming from {run}/checkpoint-2" in captured.out
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 6
    assert not marker.exists()
