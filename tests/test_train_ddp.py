"""Data-parallel training on the CPU (`torchrun --nproc_per_node 2`): every rank logs the same task weights."""

import json

import pytest
from train_helpers import (
    PYTHON,
    TASKS,
    free_port,
    make_toy_data,
    run_subprocess,
    train_flags,
    write_projector,
)

# Every test trains under torchrun with two ranks.
pytestmark = pytest.mark.slow

# Runs training under torchrun and appends every rank's training logs to $RANK_LOG_DIR/rank<N>.jsonl.
RANK_LOGGER = """
import json, os
from llava.train import llava_trainer
from llava.train.train import train

original_log = llava_trainer.LLaVATrainer.log

def log(self, logs):
    original_log(self, logs)
    path = os.path.join(os.environ["RANK_LOG_DIR"], f"rank{os.environ['RANK']}.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps(logs) + "\\n")

llava_trainer.LLaVATrainer.log = log
train()
# train() frees its DDP wrapper and tears the process groups down (left to interpreter exit, a gloo thread
# can abort the rank); what is still alive afterwards goes to $RANK_LOG_DIR/rank<N>.exit.
import gc, torch
gc.collect()
alive = {"process_group": torch.distributed.is_initialized(),
         "ddp_wrappers": sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())}
with open(os.path.join(os.environ["RANK_LOG_DIR"], f"rank{os.environ['RANK']}.exit"), "w") as f:
    f.write(json.dumps(alive))
"""


@pytest.fixture(scope="module")
def setup(tiny_llava, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    tiny = {**tiny_llava, "projector": write_projector(tiny_llava["reference_state"], folder / "mm_projector.bin")}
    script = folder / "rank_logger.py"
    script.write_text(RANK_LOGGER)
    return tiny, make_toy_data(folder), script


def run_two_ranks(setup, tmp_path, *flags):
    tiny, toy, script = setup
    args = train_flags(tiny, toy, tmp_path / "out", "--per_device_train_batch_size", "2", "--save_strategy", "no",
                       *flags)
    run_subprocess([PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(free_port()), str(script), *args], {"RANK_LOG_DIR": str(tmp_path)}, timeout=240)
    ranks = []
    for rank in (0, 1):
        lines = (tmp_path / f"rank{rank}.jsonl").read_text().splitlines()
        ranks.append([entry for entry in map(json.loads, lines) if "loss" in entry])
        assert json.loads((tmp_path / f"rank{rank}.exit").read_text()) == {"process_group": False, "ddp_wrappers": 0}
    return ranks


def weights_of(logs):
    return [[entry[f"weight_{t}"] for t in TASKS] for entry in logs]


def test_rlw_weights_are_identical_on_both_ranks(setup, tmp_path):
    rank0, rank1 = run_two_ranks(setup, tmp_path, "--weight_method", "RLW", "--weighter_seed", "7",
                                 "--max_steps", "3")
    assert len(rank0) == len(rank1) == 3
    assert rank0[0]["epoch"] == 0.5  # 6 records, 2 ranks x 2 per step: two steps per epoch
    assert weights_of(rank0) == weights_of(rank1)
    assert len({tuple(w) for w in weights_of(rank0)}) == 3  # a new draw every step


def test_dwa_weights_and_task_losses_are_identical_on_both_ranks(setup, tmp_path):
    rank0, rank1 = run_two_ranks(setup, tmp_path, "--weight_method", "DWA", "--weight_method_args", "window=1",
                                 "--max_steps", "4")
    assert len(rank0) == len(rank1) == 4
    assert weights_of(rank0) == weights_of(rank1)
    assert weights_of(rank0)[-1] != [1.0, 1.0, 1.0]  # DWA switched on (after more than `window` steps)
    for entry0, entry1 in zip(rank0, rank1):
        # Per-task losses are all-reduced over the ranks, so both ranks log the same values.
        assert {k: v for k, v in entry0.items() if k.startswith("loss_")} == {
            k: v for k, v in entry1.items() if k.startswith("loss_")}
