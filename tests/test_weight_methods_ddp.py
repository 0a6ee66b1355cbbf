"""Under torch.distributed (2 CPU ranks, gloo) every rank ends each step with the same weights."""

import json
import math
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from train_helpers import free_port

from llava.model.weight_methods import DynamicWeightAverage, RandomLossWeighting

# Two spawned ranks, each importing torch and running 30 steps.
pytestmark = pytest.mark.slow

WORLD_SIZE = 2
NUM_TASKS = 3
WINDOW = 25  # DWA's default: the run passes its switch-on point (more than 25 steps)
STEPS = 30
MICRO_BATCHES = 2


def rank_batch(rank, step, micro):
    """Token losses, mask and task ids of one rank's micro-batch; ranks differ in losses and token counts.

    Task 2 only ever appears on rank 0, and task 1 skips rank 1's second micro-batch.
    """
    rows, masks, tasks = [], [], []
    for task in range(NUM_TASKS):
        if (task == 2 and rank == 1) or (task == 1 and rank == 1 and micro == 1):
            continue
        tokens = 2 + rank + task  # different counts, so the all-reduced mean is token-weighted
        base = (1.0 + task) * (1.0 + 0.1 * rank) + 0.05 * step * (task - 1) + 0.01 * micro
        rows.append([base + 0.1 * t for t in range(tokens)] + [0.0] * (6 - tokens))
        masks.append([True] * tokens + [False] * (6 - tokens))
        tasks.append(task)
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(masks), torch.tensor(tasks)


def expected_step_losses(step):
    """Per-task mean over both ranks and micro-batches: what the all-reduced statistics give."""
    sums, counts = [0.0] * NUM_TASKS, [0] * NUM_TASKS
    for rank in range(WORLD_SIZE):
        for micro in range(MICRO_BATCHES):
            token_loss, mask, tasks = rank_batch(rank, step, micro)
            for row, row_mask, task in zip(token_loss.tolist(), mask.tolist(), tasks.tolist()):
                for value, real in zip(row, row_mask):
                    if real:
                        sums[task] += value
                        counts[task] += 1
    return [s / c for s, c in zip(sums, counts)]


def expected_dwa(history):
    if len(history) <= WINDOW:
        return [1.0] * NUM_TASKS
    buffer = ([[1.0] * NUM_TASKS] * (2 * WINDOW) + history)[-2 * WINDOW :]
    logits = []
    for k in range(NUM_TASKS):
        older = sum(entry[k] for entry in buffer[:WINDOW]) / WINDOW
        newer = sum(entry[k] for entry in buffer[WINDOW:]) / WINDOW
        logits.append(newer / older / 2.0)
    exps = [math.exp(v) for v in logits]
    return [NUM_TASKS * e / sum(exps) for e in exps]


def run_rank(rank, port, out_dir):
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=30),
    )
    try:
        dwa = DynamicWeightAverage(NUM_TASKS)
        rlw = RandomLossWeighting(NUM_TASKS, seed=11)
        dwa_weights, rlw_weights = [], []
        for step in range(STEPS):
            for micro in range(MICRO_BATCHES):
                token_loss, mask, tasks = rank_batch(rank, step, micro)
                dwa.loss(token_loss, mask, tasks)
                rlw.loss(token_loss, mask, tasks)
            dwa.step(step + 1)
            rlw.step(step + 1)
            dwa_weights.append(dwa.current_weights())
            rlw_weights.append(rlw.current_weights())
        result = {"dwa": dwa_weights, "rlw": rlw_weights, "history": [list(e) for e in dwa.loss_history]}
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_ranks_share_weights_from_all_reduced_statistics(tmp_path):
    context = mp.spawn(run_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + 60
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError("the 2-rank run did not finish within 60 s")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert ranks[0] == ranks[1]  # bit-identical weights and history on both ranks

    history = []
    for step in range(STEPS):
        history.append(expected_step_losses(step))
        for got, want in zip(ranks[0]["dwa"][step], expected_dwa(history)):
            assert math.isclose(got, want, rel_tol=1e-9)
    assert ranks[0]["dwa"][-1] != [1.0] * NUM_TASKS  # DWA switched on during the run
    for got_step, want_step in zip(ranks[0]["history"], history[-2 * WINDOW :]):
        for got, want in zip(got_step, want_step):
            assert math.isclose(got, want, rel_tol=1e-9)

    reference = RandomLossWeighting(NUM_TASKS, seed=11)
    for step in range(STEPS):
        reference.step(step + 1)
        assert ranks[0]["rlw"][step] == reference.current_weights()
