"""The finetune scripts' defaults follow the release's VisATB scripts: random batches, a checkpoint every epoch,
all kept, and a rerun resumes from the newest one."""

import os
import re

import pytest
import torch
from train_helpers import TASKS, make_toy_data, run_subprocess, step_logs, write_projector

SCRIPTS = ["finetune_academic.sh", "finetune_academic_vicuna13b.sh", "finetune_chat.sh"]


def command_flags(stderr: str) -> dict[str, str]:
    """The `--flag value` pairs of the command the launcher printed (`[visatb] ...`)."""
    line = next(line for line in stderr.splitlines() if line.startswith("[visatb] python"))
    flags, words = {}, line.split()
    for i, word in enumerate(words):
        if word.startswith("--") and i + 1 < len(words) and not words[i + 1].startswith("--"):
            flags[word[2:]] = words[i + 1]  # a later value (a user's override) wins, as in argparse
    return flags


@pytest.mark.parametrize("script", SCRIPTS)
def test_finetune_scripts_sample_at_random_and_save_every_epoch_by_default(script):
    result = run_subprocess(["bash", f"scripts_visatb/{script}"], {"NUM_GPUS": "0", "DRY_RUN": "1"})
    flags = command_flags(result.stderr)
    assert flags["group_by_modality_length"] == "False"
    assert (flags["save_strategy"], flags["save_total_limit"]) == ("epoch", "100")
    assert "save_steps" not in flags
    assert flags["num_train_epochs"] == ("3" if "chat" in script else "1")


def test_finetune_script_sampling_and_saving_can_be_changed():
    env = {"NUM_GPUS": "0", "DRY_RUN": "1", "GROUP_BY_MODALITY_LENGTH": "True", "SAVE_STRATEGY": "steps",
           "SAVE_STEPS": "500", "SAVE_TOTAL_LIMIT": "2"}  # fmt: skip
    flags = command_flags(run_subprocess(["bash", "scripts_visatb/finetune_academic.sh"], env).stderr)
    assert flags["group_by_modality_length"] == "True"
    assert (flags["save_strategy"], flags["save_steps"], flags["save_total_limit"]) == ("steps", "500", "2")


@pytest.fixture(scope="module")
def script_env(tiny_llava, tmp_path_factory):
    folder = tmp_path_factory.mktemp("script_epochs")
    toy = make_toy_data(folder)
    projector = write_projector(tiny_llava["reference_state"], folder / "pretrain" / "mm_projector.bin")
    return {
        "NUM_GPUS": "0", "BASE_MODEL_PATH": tiny_llava["base"], "DATA_PATH": toy["data"],
        "IMAGE_FOLDER": toy["images"], "VISION_TOWER": tiny_llava["vision_tower"], "PRETRAIN_MM_MLP_ADAPTER": projector,
        "TASK_NAMES": ",".join(TASKS), "WEIGHT_METHOD": "EWTB", "OUTPUT_DIR": str(folder / "run"),
        "PER_DEVICE_BATCH_SIZE": "3", "MODEL_MAX_LENGTH": "256",
    }  # fmt: skip


def checkpoints(output_dir) -> list[str]:
    return sorted((p for p in os.listdir(output_dir) if p.startswith("checkpoint-")), key=lambda p: int(p.split("-")[1]))


@pytest.mark.slow
@pytest.mark.e2e
def test_every_epoch_checkpoint_is_kept_and_a_rerun_resumes_from_the_newest(script_env):
    # 6 toy records, 3 per batch: 2 steps per epoch.
    flags = ["--disable_tqdm", "True", "--gradient_checkpointing", "False", "--learning_rate", "2e-3"]
    output_dir = script_env["OUTPUT_DIR"]
    run_subprocess(["bash", "scripts_visatb/finetune_academic.sh", *flags], {**script_env, "NUM_EPOCHS": "2"},
                   timeout=300)  # fmt: skip
    assert checkpoints(output_dir) == ["checkpoint-2", "checkpoint-4"]
    weighter_state = (os.path.join(output_dir, "checkpoint-2", "weighter_state.json"))
    assert os.path.isfile(weighter_state)
    first = step_logs(output_dir)
    assert [entry["step"] for entry in first] == [1, 2, 3, 4]

    result = run_subprocess(["bash", "scripts_visatb/finetune_academic.sh", *flags],
                            {**script_env, "NUM_EPOCHS": "3"}, timeout=300)  # fmt: skip
    assert re.search(r"resuming from \S*checkpoint-4", result.stdout + result.stderr)
    assert checkpoints(output_dir) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    resumed = step_logs(output_dir)
    assert [entry["step"] for entry in resumed] == [1, 2, 3, 4, 5, 6]
    assert [entry["loss"] for entry in resumed[:4]] == [entry["loss"] for entry in first]  # history kept
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in resumed)
