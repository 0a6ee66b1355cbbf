"""The chain's Slurm executor (`--executor slurm`), against a real one-node Slurm cluster.

A module fixture starts slurmctld, slurmd and munge on this machine (scripts_visatb/local_slurm.sh, as root);
without them the cluster tests are skipped, or fail when VISATB_REQUIRE_SLURM=1 (CI sets it). Nothing is mocked:
jobs go through the real sbatch, squeue and scancel. Covered: a failing job, a cancelled job and the rerun that
resubmits only it, a chain killed while its jobs run, the final trainings side by side. The toy chain through
Slurm against the local executor's report runs on the two-node cluster (tests/test_multinode.py).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from demo_helpers import REPO
from slurm_helpers import local_cluster

from llava.visatb.chain import cli as chain_cli
from llava.visatb.chain import config as chain_config
from llava.visatb.chain import runner as chain_runner
from llava.visatb.chain import slurm

# ---------------------------------------------------------------------------------------------- settings (no cluster)


def test_stage_values_take_a_default_kinds_and_single_stages():
    settings = slurm.SlurmSettings.from_flags(nodes="train=4,final-train=8", cpus="2,score=1", time_limit="30",
                                              gpus_per_node="train=8 infer=1", partition="cpu,train=gpu")  # fmt: skip
    train, final, infer, score = (settings.resources(s, default_cpus=3) for s in ("train", "final-train", "infer",
                                                                                   "score"))  # fmt: skip
    assert (train.nodes, final.nodes, infer.nodes) == (4, 8, 1)
    assert (train.cpus, score.cpus) == (2, 1)
    assert (train.gpus_per_node, infer.gpus_per_node, score.gpus_per_node) == (8, 1, 0)
    assert (train.partition, infer.partition, settings.resources("report", 1).partition) == (
        "gpu",
        "cpu",
        "cpu",
    )
    assert final.sbatch_flags() == ["--nodes=8", "--ntasks-per-node=1", "--cpus-per-task=2", "--gpus-per-node=8",
                                    "--partition=gpu", "--time=30"]  # fmt: skip
    assert slurm.SlurmSettings().resources("infer", default_cpus=3).cpus == 3  # the local executor's share


def test_default_cpus_are_capped_at_the_partitions_largest_node_and_given_ones_are_not():
    # A login node with more cores than the compute nodes: sbatch would refuse --cpus-per-task above a node's CPUs.
    settings = slurm.SlurmSettings.from_flags(partition="train=gpu", cpus="score=6")
    settings.node_cpus = {"": 2, "cpu": 2, "gpu": 16}
    assert settings.resources("infer", default_cpus=8).cpus == 2  # the default partition's nodes have 2
    assert settings.resources("train", default_cpus=8).cpus == 8  # partition gpu: 16 per node
    assert settings.resources("score", default_cpus=8).cpus == 6  # given: Slurm says if it cannot be had
    assert slurm.SlurmSettings().resources("infer", default_cpus=8).cpus == 8  # sinfo not read: no cap


# What a two-node training job's log holds when rank 1 on n2 was killed (SIGKILL): torchrun's report on n2, srun's
# lines as tasks ended (n2 first), then n1's torchrun, which lost its peer, in whatever order it got to print.
KILLED_RANK_LOG = """[train] 2 rank(s) on 2 node(s): n1 (rank 0), n2 (rank 1)
Root Cause (first observed failure):
[0]:
  time      : 2026-12-07_01:51:21
  host      : vm
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 11580)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
======================================================
srun: error: n2: task 1: Exited with exit code 1
Root Cause (first observed failure):
[0]:
  time      : 2026-12-07_01:51:21
  host      : vm
  rank      : 1 (local_rank: 0)
  exitcode  : -9 (pid: 11581)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 11581
======================================================
srun: error: n1: task 0: Exited with exit code 1
"""


def test_a_failed_multi_node_job_names_the_node_and_rank_that_failed_first():
    assert slurm.failed_node(KILLED_RANK_LOG) == ("node n2 failed first (srun task 1: Exited with exit code 1; "
                                                  "torchrun: rank 1: Signal 9 (SIGKILL) received by PID 11581)")  # fmt: skip
    crashed = KILLED_RANK_LOG.replace("-9 (pid: 11581)", "1 (pid: 11581)")  # no signal: the first report stands
    assert slurm.failed_node(crashed).endswith("torchrun: rank 0: exit code 1)")
    hung = "[train] error (Slurm job 7): rank 0 on node n1 lost contact with rank 1 on node n2 (host h, pid 3): " \
        "no heartbeat for 6 s; the collective failed with RuntimeError: timeout\n" + KILLED_RANK_LOG  # fmt: skip
    assert slurm.failed_node(hung) == "rank 0 on node n1 lost contact with rank 1 on node n2 (host h, pid 3): " \
        "no heartbeat for 6 s"  # fmt: skip
    assert slurm.failed_node("Traceback (most recent call last):\nValueError: bad data\n") is None


def test_slurm_knows_the_pipeline_stages():
    assert slurm.SLURM_STAGES == chain_config.STAGES
    assert {s for stages in slurm.STAGE_KINDS.values() for s in stages} <= set(chain_config.STAGES)


def test_training_only_args_reach_training_jobs_only():
    settings = slurm.SlurmSettings.from_flags(args="--mem=4G --account='my lab'", train_args="--exclusive")
    assert settings.resources("final-train", 1).args == ("--mem=4G", "--account=my lab", "--exclusive")
    assert settings.resources("score", 1).args == ("--mem=4G", "--account=my lab")


@pytest.mark.parametrize(
    ("flags", "message"),
    [({"nodes": "infer=2"}, "the infer stage runs one process; only training"),
     ({"nodes": "train=0"}, r"--slurm-nodes: 'train=0': expected a whole number of at least 1"),
     ({"cpus": "trian=2"}, "--slurm-cpus: 'trian' is no stage"),
     ({"cpus": "2,4"}, "--slurm-cpus: the default is given twice"),
     ({"time_limit": "two hours"}, "--slurm-time: 'two': expected a Slurm time"),
     ({"partition": "gpu;rm"}, "--slurm-partition: 'gpu;rm': expected a partition name"),
     ({"args": "--comment='open"}, "--slurm-args"),
     ({"gpus_per_node": "train="}, "neither VALUE nor STAGE=VALUE")],
)  # fmt: skip
def test_bad_slurm_values_name_the_flag(flags, message):
    with pytest.raises(ValueError, match=message):
        slurm.SlurmSettings.from_flags(**flags)


def test_slurm_flags_without_the_slurm_executor_are_refused(chain_inputs, capsys):
    assert chain_cli.main(chain_args(chain_inputs, "--slurm-cpus", "4")) == 2
    assert "--slurm-cpus need(s) --executor slurm (the executor is local)" in capsys.readouterr().err
    assert not chain_inputs["work"].exists()


def test_redo_forgets_the_recorded_jobs_of_the_stages_it_redoes(chain_inputs):
    # Otherwise a rerun would take an earlier job's exit code 0 for the redone item.
    chain = chain_runner.Pipeline(
        chain_config.resolve_config(chain_cli.build_parser().parse_args(chain_args(chain_inputs)))
    )
    for stage in ("score", "report"):
        files = slurm.JobFiles.of(chain.slurm_dir / stage, "x")
        files.submitted.parent.mkdir(parents=True)
        files.submitted.write_text('{"job_id": "7", "name": "n"}')
    chain.redo("report")
    assert not (chain.slurm_dir / "report").exists() and (chain.slurm_dir / "score" / "x.job.json").is_file()


def test_multi_node_training_launches_one_torchrun_per_node_through_srun():
    env = {**os.environ, "NUM_GPUS": "8", "DRY_RUN": "1", "OUTPUT_DIR": "/tmp/unused", "SLURM_JOB_NUM_NODES": "8",
           "SLURM_JOB_NODELIST": "gpu[01-08]", "SLURM_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "32",
           "SLURM_GPUS_PER_NODE": "8", "MASTER_ADDR": "gpu01"}  # fmt: skip
    result = subprocess.run(["bash", "scripts_visatb/finetune_academic.sh"], env=env, cwd=REPO, capture_output=True,
                            text=True, check=True)  # fmt: skip
    line = next(line for line in result.stderr.splitlines() if line.startswith("[visatb] srun"))
    assert line.startswith(
        "[visatb] srun --nodes 8 --ntasks-per-node 1 --kill-on-bad-exit=1 --cpus-per-task 32 --gpus-per-node 8 "
        'bash -c exec torchrun --node_rank "$SLURM_NODEID" "$@" torchrun --nnodes 8 --nproc_per_node 8 '
        "--master_addr gpu01 --master_port 29742 --rdzv_conf timeout=1800 --module llava.train.train_mem "
        "--model_name_or_path "
    )
    assert "--deepspeed " in line and "--bf16 True" in line and "deepspeed --" not in line
    single = {k: v for k, v in env.items() if k != "SLURM_JOB_NUM_NODES"}
    result = subprocess.run(["bash", "scripts_visatb/finetune_academic.sh"], env=single, cwd=REPO,
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert (
        "[visatb] deepspeed --num_gpus 8 --module llava.train.train_mem" in result.stderr
    )  # one node: as before


# ---------------------------------------------------------------------------------------------- the cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node Slurm cluster (scripts_visatb/local_slurm.sh) for this module; SLURM_CONF points at it."""
    yield from local_cluster(tmp_path_factory.mktemp("slurm"))


FAKE_FINETUNE = """#!/usr/bin/env bash
# A stand-in for the finetune script: SLEEP_ON="mini:60 B-plus-mini:5" sleeps in those models' runs,
# FAIL_ON=NAME fails the run of llava-visatb-NAME.
set -e
mkdir -p "$OUTPUT_DIR"
name="$(basename "$OUTPUT_DIR")"
for pair in ${SLEEP_ON:-}; do
    if [ "$name" = "llava-visatb-${pair%%:*}" ]; then sleep "${pair##*:}"; fi
done
if [ "$name" = "llava-visatb-${FAIL_ON:-}" ]; then echo 'boom: out of memory' >&2; exit 3; fi
echo "trained on $DATA_PATH with $OMP_NUM_THREADS thread(s)"
echo "weighting: WEIGHT_METHOD=${WEIGHT_METHOD:-} VISATB_WEIGHTS_FILE=${VISATB_WEIGHTS_FILE:-}"
echo '{}' > "$OUTPUT_DIR/config.json"
"""


@pytest.fixture
def chain_inputs(tmp_path):
    """Two tasks A and B, their validation files and a finetune script that only writes config.json."""
    data = tmp_path / "data.json"
    records = [{"id": f"{t}-{k}", "task": t, "conversations": [{"from": "human", "value": f"q {k}"},
                                                               {"from": "gpt", "value": f"a {k}"}]}
               for k in range(8) for t in ("A", "B")]  # fmt: skip
    data.write_text(json.dumps(records))
    val = {t: tmp_path / f"{t}_val-2.json" for t in ("A", "B")}
    for task, path in val.items():
        path.write_text(json.dumps([r for r in records if r["task"] == task][:2]))
    script = tmp_path / "finetune.sh"
    script.write_text(FAKE_FINETUNE)
    return {"data": data, "val": val, "script": script, "work": tmp_path / "work"}


def chain_args(inputs: dict, *extra: str) -> list[str]:
    return ["--work-dir", str(inputs["work"]), "--data", str(inputs["data"]), "--tasks", "A,B",
            "--task-metrics", "A=qa,B=caption", "--val-files", f"A={inputs['val']['A']},B={inputs['val']['B']}",
            "--finetune-script", str(inputs["script"]), "--mini-fraction", "0.25", *extra]  # fmt: skip


def submitted_ids(text: str) -> dict[str, str]:
    """{item: job id} of the jobs a run submitted, from its progress lines."""
    ids, item = {}, None
    for line in text.splitlines():
        if line.startswith("  ["):
            match = re.match(r"  \[\d+/\d+\] (\S+): ", line)  # training labels: "<model key>: ..."
            item = match.group(1) if match else None
        elif match := re.match(r"    submitted: Slurm job (\d+) ", line):
            ids[item] = match.group(1)
    return ids


@pytest.mark.slow
def test_unknown_partition_stops_the_chain_before_any_job(cluster, chain_inputs, capsys):
    code = chain_cli.main(chain_args(chain_inputs, "--executor", "slurm", "--slurm-partition", "train=gpu"))
    assert code == 2
    assert (
        "--slurm-partition: no partition gpu on this cluster (sinfo lists: local)" in capsys.readouterr().err
    )
    assert not chain_inputs["work"].exists()


@pytest.mark.slow
def test_failed_job_stops_the_chain_naming_job_item_and_log(cluster, chain_inputs, capsys, monkeypatch):
    monkeypatch.setenv("FAIL_ON", "A-plus-mini")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # then a job's thread count is its CPU count
    code = chain_cli.main(chain_args(chain_inputs, "--executor", "slurm", "--slurm-cpus", "1"))
    captured = capsys.readouterr()
    work = chain_inputs["work"]
    assert code == 1
    job = submitted_ids(captured.out)["A"]
    log = work / "logs" / "train" / "A.log"
    assert f"error: [stage 2/9] train failed: A: Slurm job {job}: exit code 3; log {log}" in captured.err
    assert "boom: out of memory" in captured.err  # the log's tail
    assert log.read_text().startswith(f"$ bash {chain_inputs['script']}")  # the local executor's log format
    assert (work / ".done" / "subsets" / "subsets.json").is_file()  # the subsets stage ran through Slurm too
    assert json.loads((work / ".done" / "subsets" / "subsets.json").read_text())["slurm_job"].isdigit()
    assert not (work / ".done" / "train" / "A.json").exists()
    # The job script: the item's environment, the repository, the same log; its exit code in the status file.
    script = (work / "slurm" / "train" / "A.sh").read_text()
    assert f"cd {REPO}" in script and "export OUTPUT_DIR=" in script and "export OMP_NUM_THREADS=1" in script
    assert (work / "slurm" / "train" / "A.status").read_text().split()[:2] == [job, "3"]


@pytest.mark.slow
def test_cancelled_job_fails_the_chain_and_a_rerun_resubmits_only_it(cluster, chain_inputs, monkeypatch):
    settings = slurm.SlurmSettings(cpus={"": 1}, poll_seconds=0.5)
    first_out = io.StringIO()
    chain = chain_runner.Pipeline(chain_config.resolve_config(chain_cli.build_parser().parse_args(chain_args(chain_inputs))),
                              out=first_out, slurm_settings=settings)  # fmt: skip
    chain.work.mkdir(parents=True)
    chain._run_items("subsets", "[test]", chain._subsets_items()[1], 1)  # locally: the train items read it
    _, items, _ = chain._train_items(chain.cfg.prep_keys, final=False)
    assert [i.key for i in items] == ["mini", "A", "B"]
    monkeypatch.setenv("SLEEP_ON", "mini:120 B-plus-mini:12")
    submitted = chain.slurm_dir / "train"
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(chain._run_items, "train", "[stage 2/9] train", items, 2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ids = {k: slurm.submitted_job(slurm.JobFiles.of(submitted, k)) for k in ("mini", "B")}
            states = slurm.job_states([job[0] for job in ids.values() if job])
            if all(ids.values()) and all(states.get(ids[k][0], ("",))[0] == "RUNNING" for k in ("mini", "B")):
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"mini and B did not both run within 60 s: {states}\n{first_out.getvalue()}")
        mini_job, b_job = ids["mini"][0], ids["B"][0]
        subprocess.run(["scancel", mini_job], check=True)
        with pytest.raises(chain_config.PipelineError) as failure:
            first.result(timeout=60)
    message = str(failure.value)
    log = chain.log_dir / "train" / "mini.log"
    assert (
        f"[stage 2/9] train failed: mini: Slurm job {mini_job} ended CANCELLED without an exit status"
        in message
    )
    assert f"log {log}; Slurm's output {submitted / 'mini.out'}" in message
    assert f"JOB {mini_job} ON" in message and "CANCELLED AT" in message  # the tail of what Slurm wrote
    assert f"still in Slurm: job {b_job} (B); a rerun waits on them" in message
    assert not chain.is_done("train", "mini") and not chain.is_done("train", "B")

    monkeypatch.delenv("SLEEP_ON")
    rerun_out = io.StringIO()
    rerun = chain_runner.Pipeline(chain.cfg, out=rerun_out, slurm_settings=settings)
    rerun._run_items("train", "[stage 2/9] train", items, 2)
    text = rerun_out.getvalue()
    assert list(submitted_ids(text)) == ["mini"]  # A finished, B still running: neither is submitted again
    assert (
        f"Slurm job {mini_job} of an earlier run ended without success (ended CANCELLED); submitting again"
        in text
    )
    assert f"Slurm job {b_job} of an earlier run is RUNNING; waiting on it" in text
    for key in ("mini", "A", "B"):
        assert rerun.is_done("train", key), text
        assert (rerun.model_dir(key) / "config.json").is_file()
    assert json.loads(rerun.marker("train", "B").read_text())["slurm_job"] == b_job
    assert "with 1 thread(s)" in log.read_text()  # --slurm-cpus 1 became the job's OMP_NUM_THREADS
    assert not list(submitted.glob("*.job.json"))  # every job accounted for


@pytest.mark.slow
def test_rerun_after_the_chain_was_killed_waits_on_running_jobs_and_takes_finished_ones(
    cluster, chain_inputs
):
    # The chain process dies (SIGKILL) right after submitting the three trainings; A and B then finish while no
    # chain runs, mini is still running when the chain is started again. Nothing is submitted twice.
    env = {**os.environ, "SLEEP_ON": "mini:15 A-plus-mini:2 B-plus-mini:2"}
    command = [sys.executable, "-m", "llava.visatb.chain", *chain_args(chain_inputs), "--executor", "slurm",
               "--slurm-cpus", "1"]  # fmt: skip
    chain = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    folder = chain_inputs["work"] / "slurm" / "train"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(folder.glob("*.job.json"))) < 3:
            time.sleep(0.1)
    finally:
        chain.kill()
        output = chain.communicate()[0]
    jobs = {k: slurm.submitted_job(slurm.JobFiles.of(folder, k)) for k in ("mini", "A", "B")}
    assert all(jobs.values()), output
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all((folder / f"{k}.status").is_file() for k in ("A", "B")):
        time.sleep(0.2)
    assert not (folder / "mini.status").is_file()  # still sleeping

    out = io.StringIO()
    rerun = chain_runner.Pipeline(chain_config.resolve_config(chain_cli.build_parser().parse_args(chain_args(chain_inputs))),
                              out=out, slurm_settings=slurm.SlurmSettings(cpus={"": 1}, poll_seconds=0.5))  # fmt: skip
    _, items, _ = rerun._train_items(rerun.cfg.prep_keys, final=False)
    rerun._run_items("train", "[stage 2/9] train", items, 2)
    text = out.getvalue()
    assert "submitted:" not in text
    # Largest first: A and B took the node's two CPUs, so mini may still wait for one (PENDING) or run.
    assert re.search(rf"Slurm job {jobs['mini'][0]} of an earlier run is (PENDING|RUNNING); waiting on it\n", text), text
    for key in ("A", "B"):
        assert (
            f"Slurm job {jobs[key][0]} of an earlier run finished with exit code 0; taking its result" in text
        )
    for key in ("mini", "A", "B"):
        assert json.loads(rerun.marker("train", key).read_text())["slurm_job"] == jobs[key][0]


@pytest.mark.slow
def test_final_trainings_run_as_jobs_side_by_side_each_with_its_weighting(cluster, chain_inputs):
    # The final VisATB and EW trainings run as two Slurm jobs at once, VisATB's with the path of weights.json,
    # EW's with WEIGHT_METHOD=EW and no weights file.
    out = io.StringIO()
    chain = chain_runner.Pipeline(chain_config.resolve_config(chain_cli.build_parser().parse_args(chain_args(chain_inputs))),
                              out=out, slurm_settings=slurm.SlurmSettings(cpus={"": 1}, poll_seconds=0.5))  # fmt: skip
    chain.work.mkdir(parents=True)
    _, items, _ = chain._train_items(chain.cfg.final_keys, final=True)
    assert [i.key for i in items] == ["VisATB", "EW"]
    chain._run_items("final-train", "[stage 6/9] final-train", items, 2)  # as with TRAIN_JOBS=2
    ids = submitted_ids(out.getvalue())
    assert sorted(ids) == ["EW", "VisATB"] and ids["EW"] != ids["VisATB"]
    expected = {"VisATB": f"WEIGHT_METHOD=EW VISATB_WEIGHTS_FILE={chain.weights_file}",
                "EW": "WEIGHT_METHOD=EW VISATB_WEIGHTS_FILE="}  # VisATB's weighter reads the file's weights
    for key, line in expected.items():
        log = (chain.log_dir / "final-train" / f"{key}.log").read_text()
        assert f"trained on {chain_inputs['data']} with 1 thread(s)" in log and f"weighting: {line}\n" in log, log
        marker = json.loads(chain.marker("final-train", key).read_text())
        assert marker["slurm_job"] == ids[key] and (chain.model_dir(key) / "config.json").is_file()
