"""What a rerun of the chain reuses: exactly the items whose record (parameters, input digests) is unchanged.

The finetune script is a stand-in that writes config.json (tests/test_pipeline.py's `inputs`); weights are
computed by the real weighting_visatb.py from a scores table written here.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys

import pytest
from test_pipeline import chain_args, chain_inputs, config, mark_done, record  # noqa: F401 (fixture)

from llava.visatb.chain import cli as chain_cli
from llava.visatb.chain import runner as chain_runner
from llava.visatb.chain.config import PipelineError


@pytest.fixture
def inputs(request):
    """tests/test_pipeline.py's two-task chain inputs."""
    return request.getfixturevalue("chain_inputs")


PREP_SCORES = {"mini": {"A": 0.2, "B": 0.3}, "A": {"A": 0.5, "B": 0.35}, "B": {"A": 0.25, "B": 0.6}}


def pipeline(inputs, *extra) -> chain_runner.Pipeline:
    return chain_runner.Pipeline(config(chain_args(inputs, *extra)), out=io.StringIO())


def said(chain) -> str:
    return chain.out.getvalue()


def run_stage(chain, stage: str) -> None:
    builders = {"subsets": chain._subsets_items, "train": lambda: chain._train_items(chain.cfg.prep_keys, False),
                "weights": chain._weights_items,
                "final-train": lambda: chain._train_items(chain.cfg.final_keys, True)}  # fmt: skip
    chain.work.mkdir(parents=True, exist_ok=True)
    chain._run_items(stage, f"[{stage}]", builders[stage]()[1], 1)


def prepared(inputs, *extra) -> chain_runner.Pipeline:
    """A chain whose preparation is done and scored, with weights and both final models made."""
    chain = pipeline(inputs, *extra)
    mark_done(chain, ("subsets", "train"))
    chain.scores_file.write_text(json.dumps(PREP_SCORES))
    run_stage(chain, "weights")
    run_stage(chain, "final-train")
    return chain


def test_an_unchanged_rerun_reuses_every_item(inputs):
    prepared(inputs)
    again = pipeline(inputs)
    for stage in ("weights", "final-train"):
        run_stage(again, stage)
    assert again.ran_items == 0 and "redo" not in said(again)


def test_a_new_temperature_redoes_the_weights_and_visatb_and_keeps_ew(inputs):
    chain = prepared(inputs)
    weights_before = json.loads(chain.weights_file.read_text())["weights"]
    ew_marker = chain.marker("final-train", "EW").read_text()

    hotter = pipeline(inputs, "--temperature", "2.0")
    run_stage(hotter, "weights")
    assert "redo weights: --temperature 0.5 -> 2.0" in said(hotter)
    assert json.loads(hotter.weights_file.read_text())["weights"] != weights_before
    run_stage(hotter, "final-train")
    out = said(hotter)
    assert f"redo VisATB: task weights {hotter.weights_file} changed" in out
    assert "redo EW" not in out and chain.marker("final-train", "EW").read_text() == ew_marker
    kept = [p.name for p in hotter.model_dir("VisATB").parent.iterdir() if ".replaced-" in p.name]
    assert len(kept) == 1 and kept[0].startswith("llava-visatb-visatb.replaced-")  # the old model is kept, not deleted
    assert hotter.model_dir("VisATB").is_dir() and hotter.model_dir("EW").is_dir()


def test_rescoring_with_equal_scores_keeps_the_weights_and_final_models(inputs):
    chain = prepared(inputs)
    chain.redo("score")
    chain.scores_file.write_text(json.dumps({**PREP_SCORES, "EW": {"A": 0.6, "B": 0.6}}))  # final scores added
    again = pipeline(inputs)
    run_stage(again, "weights")
    assert again.ran_items == 0
    changed = {**PREP_SCORES, "mini": {"A": 0.1, "B": 0.3}}
    chain.scores_file.write_text(json.dumps(changed))
    run_stage(again, "weights")
    assert "redo weights: preparation scores changed" in said(again)


def test_a_training_file_changed_in_place_redoes_the_subsets_and_the_models(inputs):
    chain = pipeline(inputs)
    run_stage(chain, "subsets")
    run_stage(chain, "train")
    data = inputs["data"]
    data.write_text(json.dumps([record(t, k) for k in range(100, 108) for t in ("A", "B")]))  # same path and size
    again = pipeline(inputs)
    run_stage(again, "subsets")
    assert f"redo subsets: training data {data} changed" in said(again)
    run_stage(again, "train")
    out = said(again)
    for key, name in (("mini", "data-mini_train-4.json"), ("A", "A-plus-mini_train-10.json"),
                      ("B", "B-plus-mini_train-10.json")):  # fmt: skip
        assert f"redo {key}: training data {again.subsets_dir / name} changed" in out
    assert again.ran_items == 4


def test_an_added_task_is_trained_and_a_removed_one_is_no_error(inputs, tmp_path):
    run = pipeline(inputs)
    run_stage(run, "subsets")
    run_stage(run, "train")
    data = inputs["data"]
    data.write_text(json.dumps([record(t, k) for k in range(8) for t in ("A", "B", "C")]))
    val_c = tmp_path / "C_val-2.json"
    val_c.write_text(json.dumps([record("C", k) for k in range(2)]))
    args = chain_args(inputs)
    args[args.index("--tasks") + 1] = "A,B,C"
    args[args.index("--task-metrics") + 1] = "A=qa,B=caption,C=qa"
    args[args.index("--val-files") + 1] += f",C={val_c}"
    three = chain_runner.Pipeline(config(args), out=io.StringIO())
    run_stage(three, "subsets")
    run_stage(three, "train")  # was a raw KeyError: 'C'
    assert "redo subsets: --tasks A,B -> A,B,C" in said(three)
    assert three.is_done("train", "C") and three.model_dir("C").is_dir()
    # Back to A,B: with C's records still in the data the subsets stage names them (it was reused silently).
    two = pipeline(inputs)
    with pytest.raises(PipelineError, match="record 2 \\(id 'C-0'\\) has task 'C', which is not in the task list"):
        run_stage(two, "subsets")
    data.write_text(json.dumps([record(t, k) for k in range(8) for t in ("A", "B")]))
    two = pipeline(inputs)
    run_stage(two, "subsets")
    run_stage(two, "train")
    # The failed attempt above left its record: the rerun says what differs from it (the data file).
    assert f"redo subsets: an unfinished earlier run of it had other inputs: training data {data} changed" in said(two)
    assert "redo mini:" in said(two) and two.is_done("train", "A")


def test_strict_reuse_refuses_instead_of_redoing(inputs):
    prepared(inputs)
    strict = pipeline(inputs, "--temperature", "2.0", "--strict-reuse", "true")
    with pytest.raises(PipelineError, match=r"out of date and --strict-reuse refuses to redo them: weights: "
                                            r"--temperature 0.5 -> 2.0"):  # fmt: skip
        run_stage(strict, "weights")


def test_an_unfinished_attempt_with_other_inputs_is_set_aside_not_resumed(inputs):
    chain = pipeline(inputs)
    run_stage(chain, "subsets")
    _, items, _ = chain._train_items(["A"], False)
    item = items[0]
    started = chain.started_marker("train", "A")
    started.parent.mkdir(parents=True)
    started.write_text(json.dumps({"item": "A", "recipe": {"params": {**chain.item_recipe(item).params,
                                                                       "env": {**item.env, "DATA_PATH": "old.json"}},
                                                            "inputs": chain.item_recipe(item).inputs}}))  # fmt: skip
    partial = chain.model_dir("A") / "checkpoint-2"
    partial.mkdir(parents=True)
    chain._run_items("train", "[train]", items, 1)
    assert "redo A: an unfinished earlier run of it had other inputs: DATA_PATH old.json -> " in said(chain)
    assert not partial.exists() and not started.exists() and chain.is_done("train", "A")


def test_a_second_chain_on_the_same_work_dir_is_refused_naming_the_first(inputs, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        work = inputs["work"]
        work.mkdir(parents=True)
        start = open(f"/proc/{holder.pid}/stat").read().rsplit(")", 1)[-1].split()[19]
        (work / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "earlier",
                                                "process_start": start, "command": "run_visatb.sh"}))  # fmt: skip
        code = chain_cli.main(chain_args(inputs))
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == 1
    assert f"{work} is in use by another chain: pid {holder.pid} on this host" in err and "run_visatb.sh" in err
    assert not (work / "subsets").exists()  # nothing ran
    # Its holder gone, the lock is taken over and the chain runs (the stand-in training then fails on inference).
    os.environ["FAIL_ON"] = "mini"
    try:
        chain_cli.main(chain_args(inputs))
    finally:
        del os.environ["FAIL_ON"]
    out = capsys.readouterr().out
    assert f"taking over {work / '.lock'}: its holder (pid {holder.pid}" in out
    assert not (work / ".lock").exists()  # released when the chain stopped


def test_adding_stl_models_and_their_scores_keeps_the_weights(inputs):
    chain = prepared(inputs)
    chain.scores_file.write_text(json.dumps({**PREP_SCORES, "alone:A": {"A": 0.55}, "alone:B": {"B": 0.7}}))
    with_stl = pipeline(inputs, "--stl", "1")
    run_stage(with_stl, "weights")
    assert with_stl.ran_items == 0 and "redo" not in said(with_stl)


def test_a_model_replaced_twice_within_a_second_keeps_both_earlier_versions(inputs):
    chain = pipeline(inputs)
    run_stage(chain, "subsets")
    _, items, _ = chain._train_items(["A"], False)
    for _ in range(3):
        chain.model_dir("A").mkdir(parents=True, exist_ok=True)
        chain._set_aside("train", items[0])
    kept = sorted(p.name for p in chain.model_dir("A").parent.iterdir())
    assert len(kept) == 3 and all(".replaced-" in name for name in kept)
