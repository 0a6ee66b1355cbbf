"""One training across several nodes: the launcher's commands, and real runs on a two-node Slurm cluster.

The cluster is two slurmd daemons (n1, n2) on this machine (scripts_visatb/local_slurm.sh with NODES=2, as
root); without Slurm the cluster tests are skipped, or fail when VISATB_REQUIRE_SLURM=1 (CI sets it). Nothing
is mocked: jobs go through the real sbatch and srun, ranks meet through torchrun's rendezvous on n1, gloo
carries the collectives. Covered: the finetune script submitted with `sbatch -N 2` trains one model of world
size 2 with the weights of a one-node run of the same global batch; DeepSpeed ZeRO-3 partitions over both
nodes and saving gathers the whole model; a rank that hangs ends the job within the distributed timeout with
the rank and node named, and the rerun resumes from the newest checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from slurm_helpers import local_cluster
from test_slurm import chain_args, chain_inputs, submitted_ids  # noqa: F401  (chain_inputs: a fixture)
from train_helpers import REPO, TASKS, free_port, make_toy_data, write_projector

from llava.visatb.chain import cli as chain_cli
from llava.visatb.chain import driver

pytestmark = pytest.mark.slow

BIN = str(Path(sys.executable).parent)  # torchrun and python of this environment, inside the jobs too


def launcher(env: dict, *flags: str) -> subprocess.CompletedProcess:
    """The finetune script with DRY_RUN=1: the command it would run, on stderr."""
    full = {**os.environ, "DRY_RUN": "1", "OUTPUT_DIR": "/tmp/unused", **env}
    return subprocess.run(["bash", "scripts_visatb/finetune_academic.sh", *flags], env=full, cwd=REPO,
                          capture_output=True, text=True, check=False)  # fmt: skip


def command_line(result: subprocess.CompletedProcess) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("[visatb] ") and "--model_name" in line)


# ---------------------------------------------------------------------------------------------- launcher (no cluster)


def test_a_cpu_job_of_two_nodes_runs_one_torchrun_per_node_with_gloo():
    slurm = {"NUM_GPUS": "0", "NUM_PROCS": "2", "SLURM_JOB_ID": "7001", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_JOB_NODELIST": "cpu[1-2]", "MASTER_ADDR": "cpu1", "VISATB_DIST_TIMEOUT": "90"}  # fmt: skip
    result = launcher(slurm)
    assert result.returncode == 0, result.stderr
    assert "falling back to the CPU with 4 process(es) (2 per node on 2 nodes): fp32, gloo, no DeepSpeed" in result.stderr
    line = command_line(result)
    assert line.startswith(
        "[visatb] srun --nodes 2 --ntasks-per-node 1 --kill-on-bad-exit=1 "
        'bash -c exec torchrun --node_rank "$SLURM_NODEID" "$@" torchrun --nnodes 2 --nproc_per_node 2 '
        "--master_addr cpu1 --master_port 29501 --rdzv_conf timeout=90 --module llava.train.train "
    )
    assert "--deepspeed" not in line and "--bf16 False" in line and line.endswith("--ddp_timeout 90")


def test_gpu_jobs_of_several_nodes_keep_deepspeed_zero3_and_a_timeout():
    result = launcher({"NUM_GPUS": "8", "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "8",
                       "SLURM_JOB_NODELIST": "gpu[01-08]", "MASTER_ADDR": "gpu01"})  # fmt: skip
    line = command_line(result)
    assert "torchrun --nnodes 8 --nproc_per_node 8 --master_addr gpu01 --master_port 29742 --rdzv_conf timeout=1800 " \
        "--module llava.train.train_mem " in line  # fmt: skip
    assert "scripts_visatb/zero3.json --bf16 True" in line and "--ddp_timeout 1800" in line


def test_without_slurm_the_nodes_come_from_nnodes_node_rank_and_master_addr():
    env = {"NUM_GPUS": "0", "NNODES": "4", "NODE_RANK": "3", "MASTER_ADDR": "head", "MASTER_PORT": "29400"}
    line = command_line(launcher(env))
    assert line.startswith("[visatb] torchrun --node_rank 3 --nnodes 4 --nproc_per_node 1 --master_addr head "
                           "--master_port 29400 --rdzv_conf timeout=1800 --module llava.train.train ")  # fmt: skip
    gpus = command_line(launcher({**env, "NUM_GPUS": "8"}))
    assert "--nproc_per_node 8" in gpus and "--module llava.train.train_mem" in gpus and "--deepspeed" in gpus
    hostfile = command_line(launcher({"NUM_GPUS": "8", "HOSTFILE": "/etc/hostfile"}))
    assert hostfile.startswith("[visatb] deepspeed --hostfile /etc/hostfile --module llava.train.train_mem ")


def test_several_processes_on_one_node_let_torchrun_pick_the_port_unless_master_port_is_set():
    # Two such trainings side by side (the chain's TRAIN_JOBS=2 with NUM_PROCS=2) both took 29500 when the
    # launcher chose a port it had found free: one died with EADDRINUSE. --standalone binds a port the system picks.
    env = {"NUM_GPUS": "0", "NUM_PROCS": "2"}
    assert command_line(launcher(env)).startswith(
        "[visatb] torchrun --standalone --nproc_per_node 2 --module llava.train.train "
    )
    assert command_line(launcher({**env, "MASTER_PORT": str(free_port())})).startswith(
        "[visatb] torchrun --nproc_per_node 2 --master_port "
    )
    assert command_line(launcher({"NUM_GPUS": "0"})).startswith("[visatb] python -m llava.train.train ")


def test_nnodes_without_its_partners_names_the_missing_variable():
    result = launcher({"NUM_GPUS": "0", "NNODES": "2", "MASTER_ADDR": "head"})
    assert result.returncode == 1
    assert "NNODES=2 needs NODE_RANK" in result.stderr and "NODE_RANK is not set" in result.stderr


def test_a_taken_rendezvous_port_moves_up_and_a_taken_master_port_is_refused():
    # Another job's rendezvous already listens on 29500 + job id % 1000 of the same first node (job 5987: 30487).
    env = {"NUM_GPUS": "0", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "x", "MASTER_ADDR": "127.0.0.1"}
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 30487))
        busy.listen()
        moved = launcher({**env, "SLURM_JOB_ID": "5987"})
        refused = launcher({**env, "SLURM_JOB_ID": "5987", "MASTER_PORT": "30487"})
    assert "port 30487 on 127.0.0.1 is in use; trying 31487" in moved.stderr
    assert "--master_port 31487 " in command_line(moved)
    assert refused.returncode == 1 and "MASTER_PORT=30487 is already in use on 127.0.0.1" in refused.stderr


def test_the_watch_names_the_rank_whose_heartbeat_stopped_and_nothing_while_all_beat(monkeypatch):
    # Two ranks' watches in this process against a real TCPStore (the rendezvous store torchrun serves).
    from llava.train.dist_watch import DistWatch, this_node

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    port = free_port()
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    watches = [DistWatch("127.0.0.1", port, rank, 2, beat_seconds=0.1) for rank in (0, 1)]
    try:
        assert watches[0].layout() == f"2 rank(s) on 1 node(s): {this_node()} (ranks 0, 1)"
        assert watches[0].lost_contact_message(RuntimeError("Timed out waiting 100ms for recv")) is None
        watches[1].stop()  # rank 1 hangs: its counter stands still
        time.sleep(0.3)
        message = watches[0].lost_contact_message(RuntimeError("Connection closed by peer [127.0.0.1]:1234"))
    finally:
        for watch in watches:
            watch.stop()
        del store
    assert message.startswith(f"[train] error: rank 0 on node {this_node()} lost contact with rank 1 on node "
                              f"{this_node()} (host {socket.gethostname()}, pid {os.getpid()}): no heartbeat")  # fmt: skip
    assert message.endswith("the collective failed with RuntimeError: Connection closed by peer [127.0.0.1]:1234")


# ---------------------------------------------------------------------------------------------- the two-node cluster


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Nodes n1 and n2 on this machine (local_slurm.sh, NODES=2); SLURM_CONF points at them."""
    yield from local_cluster(tmp_path_factory.mktemp("slurm2"), nodes=2)


@pytest.fixture(scope="module")
def finetune_env(tiny_llava, tmp_path_factory) -> dict:
    """The finetune script's variables for the tiny model on the toy data (3 tasks, 6 records), static weights."""
    folder = tmp_path_factory.mktemp("multinode")
    toy = make_toy_data(folder)
    projector = write_projector(tiny_llava["reference_state"], folder / "pretrain" / "mm_projector.bin")
    return {
        "NUM_GPUS": "0", "BASE_MODEL_PATH": tiny_llava["base"], "DATA_PATH": toy["data"],
        "IMAGE_FOLDER": toy["images"], "VISION_TOWER": tiny_llava["vision_tower"], "PRETRAIN_MM_MLP_ADAPTER": projector,
        "TASK_NAMES": ",".join(TASKS), "VISATB_WEIGHTS": "2 1 0.5", "PER_DEVICE_BATCH_SIZE": "1",
        "MODEL_MAX_LENGTH": "256", "SAVE_STRATEGY": "no", "NUM_EPOCHS": "1",
        "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }  # fmt: skip


# Small and exact: no gradient checkpointing, a constant learning rate, no warm-up.
TRAIN_FLAGS = ["--gradient_checkpointing", "False", "--disable_tqdm", "True", "--learning_rate", "2e-3",
               "--lr_scheduler_type", "constant", "--warmup_ratio", "0", "--seed", "0"]  # fmt: skip


def sbatch(env: dict, log: Path, *command: str, wait: bool = True, nodes: int = 2):
    """Submit a job of `nodes` nodes (one task each) from the repository; with `wait`, its CompletedProcess."""
    args = ["sbatch", "--parsable", "-N", str(nodes), "--ntasks-per-node", "1", "-o", str(log), "-J", "multinode"]
    full = {**os.environ, **env}
    if wait:
        return subprocess.run([*args, "--wait", *command], env=full, cwd=REPO, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
    return subprocess.Popen([*args, "--wait", *command], env=full, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def local_run(env: dict, output_dir: Path, procs: int) -> subprocess.CompletedProcess:
    """The finetune script on this node alone (no Slurm job), with `procs` processes."""
    full = {**os.environ, **env, "OUTPUT_DIR": str(output_dir), "NUM_PROCS": str(procs)}
    for name in [k for k in full if k.startswith("SLURM_")]:
        del full[name]
    result = subprocess.run(["bash", "scripts_visatb/finetune_academic.sh", *TRAIN_FLAGS], env=full, cwd=REPO,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(output_dir.glob("*.safetensors")) or sorted(output_dir.glob("pytorch_model*.bin"))
    assert files, f"no weights in {output_dir}: {sorted(p.name for p in output_dir.iterdir())}"
    state = {}
    for file in files:
        state.update(load_file(file) if file.suffix == ".safetensors" else torch.load(file, weights_only=True))
    return state


def global_step(output_dir: Path) -> int:
    return json.loads((output_dir / "trainer_state.json").read_text())["global_step"]


def test_sbatch_of_two_nodes_trains_one_model_with_the_weights_of_one_node(two_nodes, finetune_env, tmp_path):
    started = time.monotonic()
    env = {**finetune_env, "OUTPUT_DIR": str(tmp_path / "two-nodes")}
    log = tmp_path / "job.out"
    job = sbatch(env, log, "scripts_visatb/finetune_academic.sh", *TRAIN_FLAGS)
    text = log.read_text() if log.exists() else ""
    assert job.returncode == 0, job.stderr + text[-5000:]
    two_nodes_s = time.monotonic() - started
    assert "falling back to the CPU with 2 process(es) (1 per node on 2 nodes)" in text
    assert "[train] 2 rank(s) on 2 node(s): n1 (rank 0), n2 (rank 1)" in text
    assert "initial task weights: ColorQA=2, Caption=1, Text=0.5" in text  # the per-task weights reach training
    assert text.count("[train] done;") == 1  # rank 0 alone saves the model

    started = time.monotonic()
    local_run(finetune_env, tmp_path / "one-node-two-procs", 2)
    one_node_s = time.monotonic() - started
    local_run(finetune_env, tmp_path / "one-proc", 1)

    # 6 records, 1 per rank: 3 optimizer steps on two nodes (world size 2), 6 with one process.
    assert global_step(tmp_path / "two-nodes") == global_step(tmp_path / "one-node-two-procs") == 3
    assert global_step(tmp_path / "one-proc") == 6
    two, one = final_weights(tmp_path / "two-nodes"), final_weights(tmp_path / "one-node-two-procs")
    start = torch.load(finetune_env["PRETRAIN_MM_MLP_ADAPTER"], weights_only=True)  # the projector before training
    assert set(two) == set(one)
    worst = max(float(((two[k] - one[k]).abs() / one[k].abs().clamp_min(1e-3)).max()) for k in two)
    moved = max(float((two[k] - start[k]).abs().max()) for k in start)
    print(f"[multinode] two nodes {two_nodes_s:.0f} s, one node {one_node_s:.0f} s; "
          f"largest relative difference {worst:.3g}")  # fmt: skip
    # The same two ranks, the same batches and the same gloo all-reduce of two fp32 gradients (a + b in either
    # order is exact to the last bit): only the transport differs, so the weights should agree to fp32 rounding.
    assert worst <= 1e-6, worst
    assert moved > 1e-4  # the comparison is of trained weights


# Every rank: the tiny LLaVA partitioned by ZeRO-3 over all ranks, then gathered whole for saving (rank 0 writes
# it); each rank reports its node, its share of the parameters and whether the gathered tensors equal the model
# it started from (the learning rate is 0: nothing changes them).
ZERO3_ACROSS_NODES = """
import importlib, json, os, sys
import deepspeed, torch
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # gloo does the collectives
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.train import zero_utils
from llava.train.train import shut_down_distributed

checkpoint, out = sys.argv[1], sys.argv[2]
deepspeed.init_distributed(dist_backend="gloo")
rank = int(os.environ["RANK"])
model = LlavaLlamaForCausalLM.from_pretrained(checkpoint)
before = {k: v.detach().clone() for k, v in model.named_parameters()}
config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_allow_untested_optimizer": True,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), config=config)
named = dict(engine.module.named_parameters())
gathered = zero_utils.gather_to_cpu(named)
if rank == 0:
    torch.save(gathered, os.path.join(out, "full.pt"))
report = {"rank": rank, "world": torch.distributed.get_world_size(), "node": os.environ["SLURMD_NODENAME"],
          "partitioned": all(zero_utils.is_zero3_param(p) for p in named.values()),
          "local": sum(p.data.numel() for p in named.values()), "total": sum(v.numel() for v in before.values()),
          "equal": all(torch.equal(gathered[k], before[k]) for k in before)}
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(report, f)
shut_down_distributed()
"""


def test_zero3_across_two_nodes_partitions_and_saving_gathers_the_whole_model(two_nodes, finetune_env, tiny_llava,
                                                                               tmp_path):  # fmt: skip
    script = tmp_path / "zero3_nodes.py"
    script.write_text(ZERO3_ACROSS_NODES)
    # The launcher's own multi-node command (srun, one torchrun per node, the rendezvous on n1), one rank per node.
    job_script = tmp_path / "job.sh"
    job_script.write_text(f"#!/usr/bin/env bash\nset -e\nsource {REPO}/scripts_visatb/_launch.sh\n"
                          f"visatb_slurm_nodes_command 1\n"
                          f'"${{VISATB_NODES_COMMAND[@]}}" {script} {tiny_llava["full"]} {tmp_path}\n')  # fmt: skip
    log = tmp_path / "job.out"
    job = sbatch({**finetune_env, "DS_ACCELERATOR": "cpu"}, log, str(job_script))
    assert job.returncode == 0, job.stderr + (log.read_text()[-5000:] if log.exists() else "")
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["node"], r["world"]) for r in reports] == [("n1", 2), ("n2", 2)]
    for report in reports:
        assert report["partitioned"] and report["equal"]
        assert report["local"] <= report["total"] // 2 + 64  # about half of every tensor (padding aside)
    saved = torch.load(tmp_path / "full.pt", weights_only=True)
    reference = tiny_llava["reference_state"]
    common = [k for k in saved if k in reference]
    assert len(common) >= len(saved) - 2 and common  # the vision tower's buffers aside, every tensor
    for key in common:
        assert saved[key].shape == reference[key].shape and torch.equal(saved[key], reference[key]), key


def _training_rank(rank: int, node: str, output: Path) -> int | None:
    """The pid of the training process of `rank` on Slurm node `node` writing to `output` (both nodes run here)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
            cmdline = (entry / "cmdline").read_text()
        except OSError:
            continue
        if environ.get("SLURMD_NODENAME") == node and environ.get("RANK") == str(rank) and "LOCAL_RANK" in environ \
                and "llava.train.train" in cmdline and str(output) in cmdline:  # fmt: skip
            return int(entry.name)
    return None


def test_a_hung_node_ends_the_job_within_the_timeout_naming_it_and_the_rerun_resumes(two_nodes, finetune_env,
                                                                                       tmp_path):  # fmt: skip
    output = tmp_path / "run"
    timeout_s = 20
    # 300 steps, far more than run between the first checkpoint and the hang (a step takes tens of milliseconds);
    # with 90 the job could end between two looks, once the limit of 3 had already pruned checkpoint-2.
    env = {**finetune_env, "OUTPUT_DIR": str(output), "NUM_EPOCHS": "100", "SAVE_STRATEGY": "steps", "SAVE_STEPS": "2",
           "SAVE_TOTAL_LIMIT": "3", "VISATB_DIST_TIMEOUT": str(timeout_s)}  # fmt: skip
    log = tmp_path / "first.out"
    job = sbatch(env, log, "scripts_visatb/finetune_academic.sh", *TRAIN_FLAGS, wait=False)
    stopped = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(output.glob("checkpoint-*")):
            assert job.poll() is None, job.communicate()[1] + (log.read_text() if log.exists() else "")
            time.sleep(0.1)
        pid = _training_rank(1, "n2", output)
        assert pid, "rank 1 on n2 not found"
        os.kill(pid, signal.SIGSTOP)  # node n2 hangs: its rank answers nothing, its sockets stay open
        stopped = time.monotonic()
        job.wait(timeout=timeout_s + 120)
        ended = time.monotonic() - stopped
    finally:
        if job.poll() is None:
            job.kill()
            if stopped is not None:
                os.kill(pid, signal.SIGKILL)  # the job did not end: leave no stopped process behind
    text = log.read_text()
    assert job.returncode != 0, text[-3000:]
    assert re.search(r"\[train\] error \(Slurm job \d+\): rank 0 on node n1 lost contact with "
                     r"rank 1 on node n2 \(host \S+, pid \d+\): no heartbeat", text), text[-5000:]  # fmt: skip
    # gloo's own timeout, from VISATB_DIST_TIMEOUT; gloo words it by where it was waiting (a send or receive of
    # the collective, or the connection to the peer): both seen on this test's runs.
    assert re.search(rf"Timed out waiting {timeout_s * 1000}ms|Application timeout caused pair closure", text), \
        text[-3000:]  # fmt: skip
    assert f"--ddp_timeout {timeout_s}" in text
    # Not before the timeout (the stopped rank's collective could start at most a step before it stopped); then
    # the watch's check (3 beats of 2 s) and Slurm ending the other node, with room for a busy machine.
    assert timeout_s * 0.9 <= ended < timeout_s + 60, ended
    print(f"[multinode] a hung rank ended the job {ended:.0f} s after it stopped (timeout {timeout_s} s)")
    done = sorted(int(p.name.split("-")[1]) for p in output.glob("checkpoint-*"))
    assert done and done[-1] < 300

    log = tmp_path / "rerun.out"
    rerun = sbatch(env, log, "scripts_visatb/finetune_academic.sh", *TRAIN_FLAGS)
    text = log.read_text()
    assert rerun.returncode == 0, rerun.stderr + text[-5000:]
    match = re.search(r"resuming from \S*checkpoint-(\d+)", text)
    assert match and 2 <= int(match.group(1)) <= done[-1], text[-3000:]
    assert global_step(output) == 300  # 100 epochs of 3 steps


# ---------------------------------------------------------------------------------------------- the chain on two nodes

# Two ranks meet through the launcher's srun/torchrun across the job's nodes and all-reduce in a loop; rank 1
# sends itself HANG_SIGNAL after a few rounds: SIGSTOP (its node hangs: rank 0's collective times out and the
# training's watch names the lost rank and node, as llava/train/train.py does) or SIGKILL (it dies: its node's
# torchrun and srun end the job before rank 0's watch can tell, and the chain reads their lines).
HANG_PROGRAM = """
import datetime, os, signal, sys, time
import torch, torch.distributed as dist
from llava.train.dist_watch import DistWatch
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=int(os.environ["VISATB_DIST_TIMEOUT"])))
watch = DistWatch.start()
if dist.get_rank() == 0:
    print("[train]", watch.layout(), flush=True)
try:
    for step in range(1000):
        if step == 5 and dist.get_rank() == 1:
            os.kill(os.getpid(), getattr(signal, os.environ["HANG_SIGNAL"]))
        dist.all_reduce(torch.ones(4))
        time.sleep(0.2)
except Exception as error:
    print(watch.lost_contact_message(error), file=sys.stderr, flush=True)
    os._exit(1)
"""

HANGING_FINETUNE = """#!/usr/bin/env bash
# A stand-in for the finetune script: the run of llava-visatb-$HANG_ON hangs on its second node.
set -e
mkdir -p "$OUTPUT_DIR"
if [ "$(basename "$OUTPUT_DIR")" = "llava-visatb-${HANG_ON:-}" ]; then
    source "$VISATB_REPO/scripts_visatb/_launch.sh"
    visatb_slurm_nodes_command 1
    "${VISATB_NODES_COMMAND[@]}" "$HANG_PROGRAM"
fi
echo '{}' > "$OUTPUT_DIR/config.json"
"""


LOST_NODE = {
    "SIGSTOP": r"rank 0 on node n1 lost contact with rank 1 on node n2 \(host \S+, pid \d+\): no heartbeat",
    "SIGKILL": r"node n2 failed first \(srun task 1: Exited with exit code 1; torchrun: rank 1: Signal 9 \(SIGKILL\) "
               r"received by PID \d+\)",
}  # fmt: skip


@pytest.mark.parametrize("signal_name", ["SIGSTOP", "SIGKILL"])
def test_a_node_lost_during_a_chain_item_stops_the_chain_naming_job_item_and_node(two_nodes, capsys, monkeypatch,
                                                                                   tmp_path, chain_inputs,  # noqa: F811
                                                                                   signal_name):  # fmt: skip
    program = tmp_path / "hang.py"
    program.write_text(HANG_PROGRAM)
    chain_inputs["script"].write_text(HANGING_FINETUNE)
    for name, value in {"HANG_ON": "A-plus-mini", "HANG_PROGRAM": str(program), "VISATB_REPO": str(REPO),
                        "HANG_SIGNAL": signal_name,
                        "VISATB_DIST_TIMEOUT": "10", "PATH": f"{BIN}:{os.environ['PATH']}",
                        "PYTHONPATH": str(REPO)}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    code = chain_cli.main(chain_args(chain_inputs, "--executor", "slurm", "--slurm-nodes", "train=2",
                                     "--slurm-cpus", "1"))  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1, captured.err[-3000:]
    job = submitted_ids(captured.out)["A"]
    log = chain_inputs["work"] / "logs" / "train" / "A.log"
    assert re.search(rf"error: \[stage 2/9\] train failed: A: Slurm job {job}: exit code 1; log {re.escape(str(log))}; "
                     + LOST_NODE[signal_name], captured.err), captured.err[-3000:]  # fmt: skip
    sbatch_flags = json.loads((chain_inputs["work"] / "slurm" / "train" / "A.job.json").read_text())["sbatch"]
    assert "--nodes=2" in sbatch_flags  # the training job asked for both nodes


def _status(work: Path) -> dict[str, tuple[str, str]]:
    """{stage/item: (job id, state)} from `driver status`, and the driver's line under "driver"."""
    out = io.StringIO()
    driver.print_status(work, out=out)
    lines = out.getvalue().splitlines()
    rows = {"driver": ("", lines[1])}
    for line in lines[3:]:
        stage, item, job, state = line.split(None, 3)
        rows[f"{stage}/{item}"] = (job, state)
    return rows


def _wait_for(what, seconds: float, describe):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {seconds:.0f} s: {describe()}")


def test_the_chain_runs_as_a_driver_job_with_status_and_continues_after_a_cancelled_driver(two_nodes, monkeypatch,
                                                                                            chain_inputs):  # noqa: F811
    # Nothing waits in this process: the driver is a job. It is cancelled while the mini model trains (the job
    # goes on), and submitting again waits on that job instead of training mini twice. The toy inputs have no
    # real models, so the chain then fails at inference: status shows the failed items and their exit codes.
    monkeypatch.setenv("SLEEP_ON", "mini:20")
    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")
    work = chain_inputs["work"]
    args = chain_args(chain_inputs, "--slurm-cpus", "1")
    assert driver.main(["submit", *args]) == 0
    first = json.loads((work / "slurm" / "driver.json").read_text())["job_id"]
    assert driver.main(["submit", *args]) == 2  # one driver at a time
    mini = _wait_for(lambda: _status(work).get("train/mini", ("", ""))[1] == "RUNNING" and _status(work)["train/mini"],
                     120, lambda: _status(work))  # fmt: skip
    rows = _status(work)
    assert rows["driver"][1].startswith(f"driver: Slurm job {first} RUNNING")
    assert rows["subsets/subsets"][1] == "done" and rows["subsets/subsets"][0].isdigit()
    assert rows["final-train/-"] == ("-", "not started")
    subprocess.run(["scancel", first], check=True)
    _wait_for(lambda: re.search(r"CANCELLED|no longer in squeue", _status(work)["driver"][1]), 60,
              lambda: _status(work))  # fmt: skip
    assert _status(work)["train/mini"] == (mini[0], "RUNNING")  # the training job outlives its driver

    monkeypatch.delenv("SLEEP_ON")
    assert driver.main(["submit", *args]) == 0
    second = json.loads((work / "slurm" / "driver.json").read_text())["job_id"]
    _wait_for(lambda: re.search(r"(FAILED|COMPLETED|no longer in squeue)", _status(work)["driver"][1]), 300,
              lambda: _status(work))  # fmt: skip
    rows = _status(work)
    text = (work / "slurm" / "driver.out").read_text()
    assert f"Slurm job {mini[0]} of an earlier run is RUNNING; waiting on it" in text, text[-3000:]
    assert rows["train/mini"] == (mini[0], "done")  # trained once, by the first driver's job
    assert all(rows[f"train/{k}"][1] == "done" for k in ("A", "B"))
    failed = [key for key, (_, state) in rows.items() if key.startswith("infer/") and state.startswith("failed")]
    assert failed, rows
    assert rows["driver"][1].startswith(f"driver: Slurm job {second} ")


# The reduced toy chain (no EW baseline) on a quarter of the toy benchmark, from the demo's starting checkpoint:
# every training of world size 2 (NUM_PROCS=2 locally, one rank on each of n1 and n2 through Slurm).
REDUCED_CHAIN = {"DEMO_REDUCED": "1", "DEMO_SCALE": "0.25", "PATH": f"{BIN}:{os.environ['PATH']}"}
TRAININGS = [("train", key) for key in ("mini", "ToyCaption", "ToyCaptionList", "ToyCellQA", "ToyBBox")] + [
    ("final-train", "VisATB")]


@pytest.mark.e2e
def test_the_reduced_toy_chain_with_two_node_trainings_gives_the_report_of_the_local_executor(two_nodes, demo,
                                                                                             tmp_path):  # fmt: skip
    from demo_helpers import run_demo, score_table

    common = {**REDUCED_CHAIN, "DEMO_TOY_MODEL": str(demo["out"] / "toy_model")}
    started = time.monotonic()
    # Locally two trainings run side by side (TRAIN_JOBS=2), each of two processes: they used to race for one port.
    local = run_demo(tmp_path / "local", env={**common, "NUM_PROCS": "2"})
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    local_s = time.monotonic() - started
    started = time.monotonic()
    nodes = run_demo(tmp_path / "slurm", env={**common, "EXECUTOR": "slurm", "SLURM_NODES": "train=2"})
    assert nodes.returncode == 0, nodes.stdout[-3000:] + nodes.stderr[-3000:]
    slurm_s = time.monotonic() - started
    print(f"[multinode] reduced toy chain: local {local_s:.0f} s, through Slurm on two nodes {slurm_s:.0f} s")

    a, b = tmp_path / "local", tmp_path / "slurm"
    for stage, key in TRAININGS:
        log = (b / "logs" / stage / f"{key}.log").read_text()
        assert "[train] 2 rank(s) on 2 node(s): n1 (rank 0), n2 (rank 1)" in log, log[-3000:]
        assert json.loads((b / ".done" / stage / f"{key}.json").read_text())["slurm_job"].isdigit()
        assert "[train] 2 rank(s) on 1 node(s)" in (a / "logs" / stage / f"{key}.log").read_text()
    # Each node's 1 CPU caps the jobs' CPUs (the subsets job would ask for this machine's 2 and be refused).
    assert re.search(r"submitted: Slurm job \d+ \(2 node\(s\), 1 CPU\(s\)\)", nodes.stdout), nodes.stdout[-3000:]
    assert "submitted: Slurm job" not in local.stdout

    # Same world size, global batch, seed and threads per rank (1), and a two-rank gloo all-reduce is a + b in
    # either order (exact): only the transport differs, so nothing may differ, down to the last digit of a score.
    # (Against the one-process demo it would: one process draws its batches in another order.)
    scores = json.loads((a / "scores.json").read_text())
    assert json.loads((b / "scores.json").read_text()) == scores
    assert score_table((b / "report.md").read_text()) == score_table((a / "report.md").read_text())
    weights = json.loads((a / "weights.json").read_text())["visatb_weights"]
    assert json.loads((b / "weights.json").read_text())["visatb_weights"] == weights
    for _, key in TRAININGS:
        model = f"llava-toy-{'visatb' if key == 'VisATB' else key if key == 'mini' else key + '-plus-mini'}"
        assert global_step(a / "checkpoints" / model) == global_step(b / "checkpoints" / model) > 0
    # The comparison is of trained models that differ from one another, with weights away from equal.
    assert len({round(w, 4) for w in weights}) >= 3, weights
    assert any(value > 0 for value in scores["VisATB"].values()) and scores["VisATB"] != scores["mini"], scores

    # The skip rule across executors: the local executor takes every item the Slurm jobs finished.
    again = run_demo(b, env=common)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(0 command(s) run, 9 finished stage(s)/item(s) reused)" in again.stdout, again.stdout[-3000:]
