"""The VisATB chain, its report and the toy demo.

Fast tests cover configuration, failure handling, the report's tables and learning checks, and the toy
model's parts. One session-wide run of the demo (`scripts_visatb/demo.sh`: the real chain on the toy
benchmark and model, EW baseline included, with the README's default threads) backs the end-to-end
tests, including a second run that must skip every finished stage (the `demo` fixture of conftest.py, which
tests/test_slurm.py shares).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from demo_helpers import run_demo

from llava.visatb.chain import cli as chain_cli
from llava.visatb.chain import config as chain_config
from llava.visatb.chain import costs as chain_costs
from llava.visatb.chain import runner as chain_runner
from llava.visatb.chain import stages as chain_stages
from llava.visatb.results import report
from llava.visatb.tasks import PRESETS, TOY

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(task: str, k: int, image: bool = False) -> dict:
    r = {"id": f"{task}-{k}", "task": task,
         "conversations": [{"from": "human", "value": f"question {k}"}, {"from": "gpt", "value": f"answer {k}"}]}  # fmt: skip
    if image:
        r["image"] = f"images/{k}.png"
    return r


@pytest.fixture
def chain_inputs(tmp_path):
    """A two-task data file, one validation file per task and a finetune script that records its environment."""
    data = tmp_path / "data.json"
    data.write_text(json.dumps([record(t, k) for k in range(8) for t in ("A", "B")]))
    val = {}
    for task in ("A", "B"):
        val[task] = tmp_path / f"{task}_val-2.json"
        val[task].write_text(json.dumps([record(task, k) for k in range(2)]))
    script = tmp_path / "finetune.sh"
    script.write_text(
        "#!/usr/bin/env bash\nset -e\nmkdir -p \"$OUTPUT_DIR\"\n"
        "env | grep -E '^(DATA_PATH|WEIGHT_METHOD|TASK_NAMES|TASK_PRESET|VISATB_WEIGHTS_FILE)=' | sort > \"$OUTPUT_DIR/env.txt\"\n"
        "echo \"$@\" > \"$OUTPUT_DIR/args.txt\"\n"
        "if [ -n \"${FAIL_ON:-}\" ] && [[ \"$OUTPUT_DIR\" == *\"$FAIL_ON\"* ]]; then echo 'boom: out of memory' >&2; exit 3; fi\n"
        "echo '{}' > \"$OUTPUT_DIR/config.json\"\n"
    )
    return {"data": data, "val": val, "script": script, "work": tmp_path / "work"}


def chain_args(inputs: dict, *extra: str) -> list[str]:
    return ["--work-dir", str(inputs["work"]), "--data", str(inputs["data"]), "--tasks", "A,B",
            "--task-metrics", "A=qa,B=caption", "--val-files",
            f"A={inputs['val']['A']},B={inputs['val']['B']}", "--finetune-script", str(inputs["script"]),
            "--mini-fraction", "0.25", *extra]  # fmt: skip


def config(args: list[str]) -> chain_config.PipelineConfig:
    return chain_config.resolve_config(chain_cli.build_parser().parse_args(args))


# ---------------------------------------------------------------------------------------------- configuration


def test_parse_mapping_reads_pairs_and_names_bad_ones():
    assert chain_config.parse_mapping("A=qa, B=caption C=grounding", "m") == {"A": "qa", "B": "caption", "C": "grounding"}
    assert chain_config.parse_mapping("", "m") == {}
    with pytest.raises(ValueError, match="'A' is not NAME=VALUE"):
        chain_config.parse_mapping("A", "m")
    with pytest.raises(ValueError, match="'A' is given twice"):
        chain_config.parse_mapping("A=qa,A=caption", "m")


def test_academic_preset_gives_the_paper_metrics_and_leaves_sharegpt_unscored(tmp_path, chain_inputs):
    val_dir = tmp_path / "val"
    val_dir.mkdir()
    for task in ("ShareGPT4V", "RefCOCO-caption", "VQAv2", "GQA", "ChartQA", "OCRVQA", "RefCOCO-bbox"):
        (val_dir / f"{task}_val-1k.json").write_text("[]")
    cfg = config(["--work-dir", str(tmp_path / "w"), "--data", str(chain_inputs["data"]), "--task-preset",
                  "academic", "--val-dir", str(val_dir)])  # fmt: skip
    assert cfg.metrics == {"ShareGPT4V": "caption", "RefCOCO-caption": "caption_list", "VQAv2": "qa", "GQA": "qa",
                           "ChartQA": "qa", "OCRVQA": "qa", "RefCOCO-bbox": "grounding"}  # fmt: skip
    assert cfg.unscored_tasks == ["ShareGPT"]
    assert cfg.prep_keys == ["mini", *cfg.metrics]
    assert Path(cfg.val_files["GQA"]).name == "GQA_val-1k.json"
    assert cfg.stages == list(chain_config.STAGES)


def test_toy_manifest_supplies_validation_files_and_metrics(tmp_path, chain_inputs):
    from llava.visatb.toy.benchmark import generate_toy_benchmark

    bench = tmp_path / "toy"
    generate_toy_benchmark(bench, seed=0, scale=0.002, image_size=24)
    cfg = config(["--work-dir", str(tmp_path / "w"), "--data", str(chain_inputs["data"]), "--task-preset", "toy",
                  "--val-manifest", str(bench / "toy_benchmark.json"), "--eval-final", "0"])  # fmt: skip
    assert cfg.metrics == TOY.metrics
    assert cfg.unscored_tasks == ["ToyText"]
    assert all(Path(p).is_file() for p in cfg.val_files.values())
    assert "final-infer" not in cfg.stages and "final-score" not in cfg.stages


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--val-files": None}, "exactly one way"),
        ({"--val-dir": "somewhere"}, "exactly one way"),
        ({"--task-metrics": "A=qa,B=bleu"}, "unknown metric 'bleu'"),
        ({"--task-metrics": "A=qa"}, "at least two scored tasks"),
        ({"--task-metrics": "A=qa,C=qa"}, "'C', which is not in the task list"),
        ({"--val-files": "A=/no/such/file.json"}, "no validation file for scored task"),
        ({"--max-new-tokens": "qa=zero"}, "not a positive integer"),
        ({"--run-name": "bad name"}, "--run-name"),
        ({"--temperature": "0"}, "--temperature: temperature must be a positive number"),
        ({"--temperature": "nan"}, "--temperature: temperature must be a positive number"),
        ({"--gain-tolerance": "1.5"}, "gain tolerance must be a number in"),
        ({"--max-contribution": "0"}, "max contribution must be a positive number"),
    ],
)
def test_configuration_errors_name_the_culprit(chain_inputs, change, message):
    args = chain_args(chain_inputs)
    for flag, value in change.items():
        if flag in args:
            index = args.index(flag)
            del args[index:index + 2]
        if value is not None:
            args += [flag, value]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        config(args)


def test_bad_weighting_option_stops_the_chain_before_any_training(chain_inputs, capsys):
    code = chain_cli.main(chain_args(chain_inputs, "--temperature", "-0.5"))
    assert code == 2 and "--temperature" in capsys.readouterr().err
    assert not (chain_inputs["work"] / "checkpoints").exists() and not (chain_inputs["work"] / "subsets").exists()


def test_weighting_options_reach_the_weights_command(chain_inputs):
    cfg = config(chain_args(chain_inputs, "--gain-tolerance", "0.05", "--max-contribution", "4", "--strict", "1"))
    command = chain_runner.Pipeline(cfg)._weights_items()[1][0].command
    assert command[command.index("--gain-tolerance") + 1] == "0.05"
    assert command[command.index("--max-contribution") + 1] == "4.0" and "--strict" in command
    default = chain_runner.Pipeline(config(chain_args(chain_inputs)))._weights_items()[1][0].command
    assert "--strict" not in default


def test_new_weighting_options_reach_the_weights_command(chain_inputs):
    flags = ("--temperature", "auto", "--alpha", "1", "0", "0", "--form", "chat")
    cfg = config(chain_args(chain_inputs, *flags))
    assert cfg.temperature == "auto" and cfg.alpha == [1.0, 0.0, 0.0]
    assert cfg.form == "chat" and cfg.difficulty_from == "precise"  # the chat form's own difficulty
    chain = chain_runner.Pipeline(cfg)
    chain.work.mkdir(parents=True)
    scores = {"start": {"A": 0.1, "B": 0.2}}
    for task in ("A", "B"):
        scores[f"alone:{task}"] = {"A": 0.5, "B": 0.5}
        scores[f"mini-alone:{task}"] = {task: 0.3}
    chain.scores_file.write_text(json.dumps(scores))
    command = chain._weights_items()[1][0].command
    assert command[command.index("--temperature") + 1] == "auto"
    assert command[command.index("--alpha") + 1 : command.index("--alpha") + 4] == ["1.0", "0.0", "0.0"]
    assert command[command.index("--form") + 1] == "chat"
    assert command[command.index("--difficulty-from") + 1] == "precise"
    default = chain_runner.Pipeline(config(chain_args(chain_inputs)))._weights_items()[1][0].command
    assert default[default.index("--alpha") + 1 : default.index("--alpha") + 4] == ["0.25", "0.25", "0.5"]
    assert default[default.index("--temperature") + 1] == "0.5"
    assert default[default.index("--difficulty-from") + 1] == "real" and "academic" in default


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--alpha", "0.5", "0.5", "0.5"], "--alpha: alpha must sum to 1"),
     (["--alpha", "1.5", "-0.5", "0"], "--alpha: alpha must be non-negative"),
     (["--temperature", "warm"], "--temperature: temperature must be a positive number or 'auto'")],
)  # fmt: skip
def test_bad_new_weighting_options_stop_the_chain_before_any_training(chain_inputs, capsys, flags, message):
    assert chain_cli.main(chain_args(chain_inputs, *flags)) == 2
    assert message in capsys.readouterr().err
    work = chain_inputs["work"]
    assert not (work / "checkpoints").exists() and not (work / "subsets").exists()


def mark_done(chain: chain_runner.Pipeline, stages) -> None:
    """Mark stages done with every item they would run, as a finished run leaves them."""
    builders = {"subsets": chain._subsets_items, "train": lambda: chain._train_items(chain.cfg.prep_keys, False),
                "infer": lambda: chain._infer_items(chain._prep_eval_keys()),
                "score": lambda: chain._score_items(chain._prep_eval_keys())}  # fmt: skip
    for stage in stages:
        if stage == "subsets":  # real subsets (fast): later stages read their manifest
            chain.work.mkdir(parents=True, exist_ok=True)
            chain._run_items("subsets", "[test]", chain._subsets_items()[1], 1)
        items = [] if stage == "train" else builders[stage]()[1]
        keys = chain.cfg.prep_keys if stage == "train" else [i.key for i in items]
        chain.marker(stage).parent.mkdir(parents=True, exist_ok=True)
        chain.marker(stage).write_text(json.dumps({"stage": stage, "items": keys}))


def test_precise_difficulty_without_its_scores_stops_at_the_weights_stage(chain_inputs, capsys):
    args = chain_args(chain_inputs, "--difficulty-from", "precise")
    out = io.StringIO()
    chain = chain_runner.Pipeline(config(args), out=out)
    work = chain_inputs["work"]
    mark_done(chain, ("subsets", "train", "infer", "score"))  # as if the preparation had run
    scores = {"mini": {"A": 0.2, "B": 0.3}, "A": {"A": 0.5, "B": 0.35}, "B": {"A": 0.25, "B": 0.6},
              "alone:A": {"A": 0.55}}  # fmt: skip
    chain.scores_file.write_text(json.dumps(scores))
    with pytest.raises(chain_config.PipelineError, match="weights stage: --form academic with --difficulty-from"):
        chain.run()
    assert chain_cli.main(args) == 1
    err = capsys.readouterr().err
    assert "error: weights stage: --form academic with --difficulty-from precise needs scores" in err
    assert "mini-alone:A (on A); mini-alone:B (on B); alone:B (on B)" in err
    assert not (work / "weights.json").exists() and not chain.is_done("weights")


def test_chat_form_names_every_missing_row(chain_inputs):
    chain = chain_runner.Pipeline(config(chain_args(chain_inputs, "--form", "chat")))
    with pytest.raises(chain_config.PipelineError, match=r"start \(on A, B\); alone:A \(on A, B\); alone:B \(on A, B\); "
                       r"mini-alone:A \(on A\); mini-alone:B \(on B\) \(alone:<task>"):  # fmt: skip
        chain._weights_items()


def test_chat_form_without_a_start_model_stops_before_any_training(chain_inputs, capsys):
    assert chain_cli.main(chain_args(chain_inputs, "--form", "chat")) == 1
    err = capsys.readouterr().err
    assert "no 'start' score on A, B: pass --start-model" in err
    work = chain_inputs["work"]
    assert not (work / "checkpoints").exists() and not (work / "subsets").exists()
    # Start scores recorded by hand beforehand (one task short, then both) are what the check accepts.
    chain = chain_runner.Pipeline(config(chain_args(chain_inputs, "--form", "chat")))
    work.mkdir(parents=True)
    chain.scores_file.write_text(json.dumps({"start": {"A": 0.1}}))
    with pytest.raises(chain_config.PipelineError, match=r"no 'start' score on B: pass --start-model"):
        chain._check_start_scores()
    chain.scores_file.write_text(json.dumps({"start": {"A": 0.1, "B": 0.2}}))
    chain._check_start_scores()
    # The academic form never needs the start model.
    chain.scores_file.unlink()
    chain_runner.Pipeline(config(chain_args(chain_inputs)))._check_start_scores()


def test_forms_and_difficulty_decide_which_preparation_models_train(chain_inputs):
    assert config(chain_args(chain_inputs)).prep_keys == ["mini", "A", "B"]
    assert config(chain_args(chain_inputs, "--stl", "1")).prep_keys == ["mini", "A", "B", "alone:A", "alone:B"]
    precise = config(chain_args(chain_inputs, "--difficulty-from", "precise")).prep_keys
    assert precise == ["mini", "A", "B", "alone:A", "alone:B", "mini-alone:A", "mini-alone:B"]
    # App. C: contributions from start and alone:<task>, difficulty from mini-alone:<task>; no mini sets.
    chat = config(chain_args(chain_inputs, "--form", "chat"))
    assert chat.prep_keys == ["alone:A", "alone:B", "mini-alone:A", "mini-alone:B"]
    chat_real = config(chain_args(chain_inputs, "--form", "chat", "--difficulty-from", "real")).prep_keys
    assert chat_real == ["mini", "A", "B", "alone:A", "alone:B"]


def test_methods_stl_and_ablations_train_the_right_models(chain_inputs):
    args = chain_args(chain_inputs, "--stl", "1", "--methods", "EW,TLA,RLW,DWA,IGB",
                      "--ablations", "alpha temperature difficulty")  # fmt: skip
    cfg = config(args)
    ablations = ["VisATB[alpha=1:0:0]", "VisATB[alpha=0:1:0]", "VisATB[alpha=0:0:1]", "VisATB[alpha=0.5:0.5:0]",
                 "VisATB[alpha=1/3:1/3:1/3]", "VisATB[T=2]", "VisATB[T=1]", "VisATB[D=precise]"]  # fmt: skip
    assert cfg.final_keys == ["VisATB", "EW", "TLA", "RLW", "DWA", "IGB", *ablations]
    assert cfg.prep_keys[-4:] == ["alone:A", "alone:B", "mini-alone:A", "mini-alone:B"]  # D=precise needs both
    chain = chain_runner.Pipeline(cfg)
    chain.work.mkdir(parents=True)
    _, items, _ = chain._subsets_items()
    assert items[0].key == "subsets+alone" and "--alone" in items[0].command
    chain._run_items("subsets", "[test]", items, 1)
    manifest = chain.subsets_manifest()
    _, prep, _ = chain._train_items(cfg.prep_keys, final=False)
    _, final, _ = chain._train_items(cfg.final_keys, final=True)
    envs = {item.key: item.env for item in prep + final}
    assert envs["alone:A"]["DATA_PATH"] == manifest["alone"]["A"]["path"]
    assert envs["mini-alone:B"]["DATA_PATH"] == manifest["mini_alone"]["B"]["path"]
    assert json.loads(Path(manifest["alone"]["A"]["path"]).read_text()) == [
        r for r in json.loads(chain_inputs["data"].read_text()) if r["task"] == "A"]  # fmt: skip
    mini_b = [r for r in json.loads(Path(manifest["mini"]["path"]).read_text()) if r["task"] == "B"]
    assert json.loads(Path(manifest["mini_alone"]["B"]["path"]).read_text()) == mini_b and len(mini_b) == 2
    methods = {k: envs[k]["WEIGHT_METHOD"] for k in ("EW", "TLA", "RLW", "DWA", "IGB")}
    assert methods == {"EW": "EW", "TLA": "EWTB", "RLW": "RLW", "DWA": "DWA", "IGB": "IGB"}
    assert all(envs[k]["VISATB_WEIGHTS_FILE"] == "" for k in methods)
    assert envs["VisATB[T=2]"]["VISATB_WEIGHTS_FILE"] == str(chain.work / "weights" / "visatb-T_2.json")
    folders = [i.outputs[0].parent.name for i in prep + final]
    assert len(set(folders)) == len(folders)
    assert "llava-visatb-A-alone" in folders and "llava-visatb-B-mini-alone" in folders
    assert "llava-visatb-visatb-alpha_1_3_1_3_1_3" in folders and "llava-visatb-tla" in folders
    # One weights file per ablation row, with its own option and the main run's others.
    rows = ["mini", "A", "B", "alone:A", "alone:B", "mini-alone:A", "mini-alone:B"]
    chain.scores_file.write_text(json.dumps({k: {"A": 0.5, "B": 0.5} for k in rows}))
    _, weights, _ = chain._weights_items()
    assert [i.key for i in weights] == ["weights", *(f"weights:{k}" for k in ablations)]

    def option(item, flag, n=1):
        at = item.command.index(flag) + 1
        return item.command[at : at + n]

    by_key = {i.key: i for i in weights}
    assert option(by_key["weights:VisATB[alpha=1/3:1/3:1/3]"], "--alpha", 3) == [repr(1 / 3)] * 3
    assert option(by_key["weights:VisATB[alpha=1/3:1/3:1/3]"], "--temperature") == ["0.5"]
    assert option(by_key["weights:VisATB[T=1]"], "--temperature") == ["1.0"]
    assert option(by_key["weights:VisATB[T=1]"], "--alpha", 3) == ["0.25", "0.25", "0.5"]
    assert option(by_key["weights:VisATB[D=precise]"], "--difficulty-from") == ["precise"]
    assert option(by_key["weights"], "--difficulty-from") == ["real"]
    assert option(by_key["weights:VisATB[T=2]"], "--output") == [str(chain.work / "weights" / "visatb-T_2.json")]
    assert "--plot" in by_key["weights"].command and "--plot" not in by_key["weights:VisATB[T=2]"].command


def test_bad_methods_and_ablations_stop_before_any_training(chain_inputs, capsys):
    assert chain_cli.main(chain_args(chain_inputs, "--methods", "EW,XYZ")) == 2
    assert "--methods 'EW,XYZ': give distinct names from VisATB, EW, TLA, RLW, DWA, IGB" in capsys.readouterr().err
    assert chain_cli.main(chain_args(chain_inputs, "--ablations", "alpha,depth")) == 2
    assert "--ablations: unknown depth" in capsys.readouterr().err
    assert not (chain_inputs["work"] / "subsets").exists()


def test_a_finished_stage_runs_again_for_new_items_only(chain_inputs):
    # A stage marked done for the mini and task-plus-mini models is not skipped when STL models are added;
    # the finished items inside it are.
    plain = chain_runner.Pipeline(config(chain_args(chain_inputs)))
    plain.work.mkdir(parents=True)
    mark_done(plain, ("train",))
    for key in ("mini", "A", "B"):
        plain.marker("train", key).parent.mkdir(parents=True, exist_ok=True)
        plain.marker("train", key).write_text("{}")
    cfg = config(chain_args(chain_inputs, "--stl", "1"))
    chain = chain_runner.Pipeline(cfg, out=io.StringIO())
    _, items, _ = chain._subsets_items()
    chain._run_items("subsets", "[test]", items, 1)
    assert chain.stage_needs_run("train", [chain_stages.Item(k, k, []) for k in cfg.prep_keys])
    assert not plain.stage_needs_run("train", [chain_stages.Item(k, k, []) for k in plain.cfg.prep_keys])
    _, train, _ = chain._train_items(cfg.prep_keys, final=False)
    chain._run_items("train", "[test]", train, 1)
    trained = sorted(p.name for p in (chain.work / "checkpoints").iterdir())
    assert trained == ["llava-visatb-A-alone", "llava-visatb-B-alone"]  # mini, A, B were done: not retrained



def test_a_stage_starts_its_largest_items_first(chain_inputs):
    # 8 records per task, mini fraction 0.25: A and B plus mini 10 records each, A and B alone 8, mini 4. With
    # one slot the labels come out in the order the items start: largest first, ties in the stage's order.
    out = io.StringIO()
    chain = chain_runner.Pipeline(config(chain_args(chain_inputs, "--stl", "1")), out=out)
    chain.work.mkdir(parents=True)
    chain._run_items("subsets", "[test]", chain._subsets_items()[1], 1)
    _, train, _ = chain._train_items(chain.cfg.prep_keys, final=False)
    assert [i.key for i in train] == ["mini", "A", "B", "alone:A", "alone:B"]
    assert [i.size for i in train] == [4, 10, 10, 8, 8]
    chain._run_items("train", "[test]", train, 1)
    started = re.findall(r"^  \[(\d)/5\] (\S+):", out.getvalue(), flags=re.M)
    assert started == [("1", "A"), ("2", "B"), ("3", "alone:A"), ("4", "alone:B"), ("5", "mini")]
    # Final trainings are all on the entire data: they keep their order.
    _, final, _ = chain._train_items(chain.cfg.final_keys, final=True)
    assert {i.size for i in final} == {0}


def _four_task_args(inputs: dict, tmp_path: Path, *extra: str) -> list[str]:
    """Tasks A, B (qa) and C, D (caption), 16 records each, and a validation file per task."""
    data = tmp_path / "data4.json"
    data.write_text(json.dumps([record(t, k) for k in range(16) for t in "ABCD"]))
    val = {}
    for task in "ABCD":
        val[task] = tmp_path / f"{task}_val-2.json"
        val[task].write_text(json.dumps([record(task, k) for k in range(2)]))
    return ["--work-dir", str(inputs["work"]), "--data", str(data), "--tasks", "A,B,C,D",
            "--task-metrics", "A=qa,B=qa,C=caption,D=caption", "--val-files", ",".join(f"{t}={p}" for t, p in val.items()),
            "--finetune-script", str(inputs["script"]), "--mini-fraction", "0.25", *extra]  # fmt: skip


def test_task_groups_and_large_fraction_shape_the_preparation_models(chain_inputs, tmp_path):
    cfg = config(_four_task_args(chain_inputs, tmp_path, "--task-groups", "QA=A,B;Text=C,D", "--large-fraction",
                                 "0.5", "--stl", "1"))  # fmt: skip
    assert cfg.units == ["QA", "Text"] and cfg.groups == {"QA": ["A", "B"], "Text": ["C", "D"]}
    assert cfg.prep_keys == ["mini", "QA", "Text", "alone:QA", "alone:Text"]
    chain = chain_runner.Pipeline(cfg, out=io.StringIO())
    chain.work.mkdir(parents=True)
    _, items, _ = chain._subsets_items()
    command = items[0].command
    assert command[command.index("--task-groups") + 1] == "QA=A,B;Text=C,D"
    assert command[command.index("--large-fraction") + 1] == "0.5" and items[0].key == "subsets+alone+groups"
    chain._run_items("subsets", "[test]", items, 1)
    manifest = chain.subsets_manifest()
    # QA-plus-mini: half of A and of B (8 + 8) plus the minis of C and D (4 + 4), minis inside the halves.
    assert manifest["plus_mini"]["QA"]["per_task"] == {"A": 8, "B": 8, "C": 4, "D": 4}
    assert manifest["alone"]["Text"]["per_task"] == {"A": 0, "B": 0, "C": 16, "D": 16}
    _, prep, _ = chain._train_items(cfg.prep_keys, final=False)
    envs = {i.key: i.env for i in prep}
    assert envs["QA"]["DATA_PATH"] == manifest["plus_mini"]["QA"]["path"]
    assert [i.outputs[0].parent.name for i in prep if i.key == "Text"] == ["llava-visatb-Text-plus-mini"]
    chain.scores_file.write_text(json.dumps({k: {t: 0.5 for t in "ABCD"} for k in cfg.prep_keys}))
    _, weights, _ = chain._weights_items()
    assert weights[0].command[weights[0].command.index("--task-groups") + 1] == "QA=A,B;Text=C,D"
    _, report_items, _ = chain._report_items()
    assert all("--task-groups" in i.command for i in report_items)


def test_a_presets_groups_are_the_default(chain_inputs, tmp_path, monkeypatch):
    from llava.visatb.tasks import TaskPreset

    preset = TaskPreset("grouped", ("A", "B", "C", "D"), {"A": "qa", "B": "qa", "C": "caption", "D": "caption"},
                        groups={"QA": ("A", "B"), "Text": ("C", "D")})  # fmt: skip
    monkeypatch.setitem(PRESETS, "grouped", preset)
    args = _four_task_args(chain_inputs, tmp_path)
    at = args.index("--tasks")
    args[at : at + 4] = ["--task-preset", "grouped"]  # drops --tasks and --task-metrics
    assert config(args).groups == {"QA": ["A", "B"], "Text": ["C", "D"]}
    with pytest.raises(ValueError, match="scored task.*D are in no group"):
        config([*args, "--task-groups", "G1=A,B;G2=C"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--task-groups", "G1=A,C;G2=B,D"), "group 'G1' mixes score scales (A=qa, C=caption)"),
        (("--task-groups", "G1=A,B;G2=C"), "scored task(s) D are in no group"),
        (("--task-groups", "A=A,B;G2=C,D"), "group name 'A' is a task name"),
        (("--task-groups", "EW=A,B;G2=C,D"), "group name 'EW' is a task name or a model key"),
        (("--large-fraction", "0.1"), "--large-fraction must be in [--mini-fraction, 1]"),
    ],
)
def test_bad_groups_and_large_fraction_stop_before_anything_runs(chain_inputs, tmp_path, capsys, extra, message):
    assert chain_cli.main(_four_task_args(chain_inputs, tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not chain_inputs["work"].exists()


def test_item_devices_read_the_launcher_and_inference_lines():
    gpu = "[visatb] deepspeed --num_gpus 8 --module llava.train.train_mem --deepspeed zero3.json\n"
    assert chain_costs.item_devices("train", "$ bash x\n" + gpu) == {"gpus": 8, "processes": 8}
    cpu = "[visatb] no GPU (NUM_GPUS=0): falling back to the CPU with 2 process(es): fp32, no DeepSpeed\n"
    assert chain_costs.item_devices("final-train", cpu) == {"gpus": 0, "processes": 2}
    assert chain_costs.item_devices("train", "no launcher line") == {"gpus": None, "processes": None}
    assert chain_costs.item_devices("infer", "[inference] m loaded on cuda:0\n") == {"gpus": 1, "processes": 1}
    assert chain_costs.item_devices("final-infer", "[inference] m loaded on cpu\n") == {"gpus": 0, "processes": 1}


def test_cost_section_by_hand():
    def entry(stage, item, part, seconds, gpus):
        return {"stage": stage, "item": item, "part": part, "seconds": seconds, "gpus": gpus, "processes": gpus}

    items = [entry("train", "mini", "preparation", 10, 2), entry("train", "A", "preparation", 20, 2),
             entry("infer", "mini", "preparation", 5, 1), entry("infer", "A", "preparation", 5, 1),
             entry("score", "A__A", "preparation", 1, None), entry("final-train", "VisATB", "final", 50, 2),
             entry("final-train", "EW", "other", 45, 2), entry("weights", "weights", "preparation", 1, 0)]  # fmt: skip
    record = {"jobs": 1, "train_jobs": 1, "costs": {"items": {f"{e['stage']}/{e['item']}": e for e in items},
                                                    "units": 2, "mini_fraction": 0.25, "large_fraction": 0.5}}  # fmt: skip
    text = "\n".join(report.cost_section(record))
    # Preparation training (10 + 20) x 2 = 60 device-s of the final 50 x 2 = 100; evaluation 5 + 5 + 1 = 11.
    assert "| preparation (the models VisATB's weights need) | 5 | 60 s (0.60x) | 11 s (0.11x) |" in text
    assert "| VisATB's final model | 1 | 100 s (1.00x) | - |" in text
    assert "R_large + N * R_mini = 0.5 + 2 x 0.25 = 1.00x" in text and "0.60x the final training here" in text
    assert "1 command(s) did not log their device count" in text
    assert report.cost_section({"costs": {"items": {}}}) == []


# ---------------------------------------------------------------------------------------------- running


def test_failed_stage_stops_the_chain_naming_stage_item_and_log(chain_inputs, capsys):
    # The items start largest first (A and B plus mini, then mini), one at a time: A finishes, B fails, and
    # the stage starts nothing after a failure.
    os.environ["FAIL_ON"] = "B-plus-mini"
    try:
        code = chain_cli.main(chain_args(chain_inputs))
    finally:
        del os.environ["FAIL_ON"]
    captured = capsys.readouterr()
    err = captured.err
    work = chain_inputs["work"]
    log = work / "logs" / "train" / "B.log"
    assert code == 1
    assert "[stage 2/9] train failed" in err and str(log) in err and "boom: out of memory" in err
    assert (work / ".done" / "subsets.json").is_file()  # the finished stage stays done
    assert (work / ".done" / "train" / "A.json").is_file()  # and so does the finished item
    assert not (work / ".done" / "train" / "B.json").exists()  # no marker for the failed item
    assert not (work / ".done" / "train" / "mini.json").exists() and "] mini:" not in captured.out
    assert not (work / ".done" / "train.json").exists()


def test_training_items_get_the_right_data_and_weights(chain_inputs, capsys):
    cfg = config(chain_args(chain_inputs))
    chain = chain_runner.Pipeline(cfg)
    work = chain_inputs["work"]
    work.mkdir(parents=True)
    # Only the stages that need no model: subsets, then the preparation and final training items.
    _, items, _ = chain._subsets_items()
    chain._run_items("subsets", "[test]", items, 1)
    _, prep, _ = chain._train_items(cfg.prep_keys, final=False)
    _, final, _ = chain._train_items(cfg.final_keys, final=True)
    envs = {item.key: item.env for item in prep + final}
    manifest = json.loads((work / "subsets" / "subsets.json").read_text())
    assert envs["mini"]["DATA_PATH"] == manifest["mini"]["path"]
    assert envs["A"]["DATA_PATH"] == manifest["plus_mini"]["A"]["path"]
    assert envs["VisATB"]["DATA_PATH"] == envs["EW"]["DATA_PATH"] == str(chain_inputs["data"].resolve())
    assert envs["VisATB"]["VISATB_WEIGHTS_FILE"] == str(work / "weights.json")
    assert envs["EW"]["VISATB_WEIGHTS_FILE"] == "" and envs["mini"]["VISATB_WEIGHTS_FILE"] == ""
    assert {e["WEIGHT_METHOD"] for e in envs.values()} == {"EW"}
    assert envs["A"]["TASK_NAMES"] == "A,B" and envs["A"]["TASK_PRESET"] == ""
    assert [i.outputs[0].parent.name for i in prep] == ["llava-visatb-mini", "llava-visatb-A-plus-mini",
                                                          "llava-visatb-B-plus-mini"]  # fmt: skip


def test_inference_is_one_command_per_model_with_a_limit_per_validation_file(chain_inputs):
    from llava.visatb.defaults import DEFAULT_MAX_NEW_TOKENS

    cfg = config(chain_args(chain_inputs, "--max-new-tokens", "qa=6"))
    chain = chain_runner.Pipeline(cfg)
    _, items, _ = chain._infer_items(["mini", "A"])
    assert [item.key for item in items] == ["mini", "A"]
    command = items[0].command
    files = command[command.index("--question-file") + 1 : command.index("--answers-folder")]
    assert files == [chain.val_file("A"), chain.val_file("B")]
    # A is a qa task (limit 6); B has none, so it gets the CLI's own default.
    assert command[command.index("--max_new_tokens") + 1 :][:2] == ["6", str(DEFAULT_MAX_NEW_TOKENS)]
    assert chain_stages.DEFAULT_MAX_NEW_TOKENS == DEFAULT_MAX_NEW_TOKENS
    assert items[0].outputs == [chain.answers_file("mini", "A"), chain.answers_file("mini", "B")]


def test_redo_forgets_only_the_stage_it_names(chain_inputs):
    # Later stages are redone by their records where what they read changes, never wholesale: --redo score must
    # not delete the final models (EW depends on no score at all).
    cfg = config(chain_args(chain_inputs))
    chain = chain_runner.Pipeline(cfg)
    for stage in cfg.stages:
        chain.marker(stage).parent.mkdir(parents=True, exist_ok=True)
        chain.marker(stage).write_text("{}")
    chain.weights_file.write_text("{}")
    for key in cfg.final_keys:
        chain.model_dir(key).mkdir(parents=True)
    chain.redo("weights")
    assert [s for s in cfg.stages if not chain.is_done(s)] == ["weights"]
    assert not chain.weights_file.exists()
    chain.redo("score")
    assert all(chain.model_dir(key).is_dir() for key in cfg.final_keys)
    with pytest.raises(ValueError, match="unknown stage"):
        chain.redo("nonsense")


# ---------------------------------------------------------------------------------------------- report

TASKS = ["T1", "T2"]
METRICS = {"T1": "qa", "T2": "caption"}


def healthy_scores() -> dict:
    return {
        "start": {"T1": 0.0, "T2": 0.05},
        "mini": {"T1": 0.40, "T2": 0.50},
        "T1": {"T1": 0.60, "T2": 0.55},
        "T2": {"T1": 0.42, "T2": 0.80},
        "EW": {"T1": 0.62, "T2": 0.85},
        "VisATB": {"T1": 0.66, "T2": 0.84},
    }


def test_relative_improvements_by_hand():
    rows = report.relative_improvements(healthy_scores(), TASKS)
    assert rows["EW vs task-plus-mini"]["T1"] == pytest.approx((0.62 - 0.60) / 0.60)
    assert rows["VisATB vs task-plus-mini"]["T2"] == pytest.approx((0.84 - 0.80) / 0.80)
    assert rows["VisATB vs EW"]["T1"] == pytest.approx((0.66 - 0.62) / 0.62)
    assert report.relative_change(1.0, 0.0) is None
    summary = report.relative_summary(rows, TASKS)
    mean = ((0.66 - 0.62) / 0.62 + (0.84 - 0.85) / 0.85) / 2
    assert f"VisATB vs EW: mean relative change {100 * mean:+.1f}%, ahead on 1 of 2 task(s)." in summary


def test_score_table_rows_formats_and_bold_best():
    table = report.score_table(healthy_scores(), TASKS, METRICS).splitlines()
    assert table[0] == "| model | T1 (acc %) | T2 (CIDEr) |"
    assert [line.split("|")[1].strip() for line in table[2:]] == [
        "start (untrained)", "mini", "T1-plus-mini", "T2-plus-mini", "EW", "VisATB"]  # fmt: skip
    assert "| VisATB | **66.00** | 0.8400 |" in table
    assert "| EW | 62.00 | **0.8500** |" in table


def test_learning_checks_pass_on_healthy_scores():
    checks = report.learning_checks(healthy_scores(), TASKS, METRICS)
    assert [c.status for c in checks] == ["PASS", "PASS", "PASS"]


def test_learning_checks_fail_when_a_model_does_not_beat_the_start():
    scores = healthy_scores()
    scores["mini"]["T2"] = 0.05
    first = report.learning_checks(scores, TASKS, METRICS)[0]
    assert first.failed and "mini on T2 (0.0500 vs start 0.0500)" in first.detail


def test_learning_checks_fail_when_full_data_models_lag_the_mini_model():
    scores = healthy_scores()
    scores["mini"] = {"T1": 0.9, "T2": 0.9}
    check = report.learning_checks(scores, TASKS, METRICS)[1]
    assert check.failed and "ahead of mini in 0 of 6 comparisons" in check.detail


@pytest.mark.parametrize(("value", "reason"), [(0.0, "0 for every model"), (1.0, "at the maximum for every model")])
def test_learning_checks_fail_on_a_flat_task(value, reason):
    scores = healthy_scores()
    for model in scores:
        if model != "start":
            scores[model]["T1"] = value
    check = report.learning_checks(scores, TASKS, METRICS)[2]
    assert check.failed and f"T1 ({reason})" in check.detail


def test_learning_checks_skip_without_a_start_row():
    scores = healthy_scores()
    del scores["start"]
    assert report.learning_checks(scores, TASKS, METRICS)[0].status == "SKIP"


def test_report_cli_warns_and_strict_exits_1(tmp_path, capsys):
    scores = healthy_scores()
    scores["EW"]["T1"] = 0.0  # at the starting point, not above it (a score is never negative)
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(scores))
    out = tmp_path / "report.md"
    args = ["--scores", str(path), "--tasks", "T1,T2", "--metrics", "T1=qa,T2=caption", "--output", str(out)]
    assert report.main(args) == 0
    assert "WARNING: learning check failed: trained models beat the starting point" in capsys.readouterr().err
    assert report.main([*args, "--strict"]) == 1
    assert "## Learning checks" in out.read_text()


def test_report_has_no_stl_section_without_an_stl_baseline_for_every_task():
    assert "Against STL" not in report.build_report(healthy_scores(), TASKS, METRICS).markdown
    partial = {**healthy_scores(), "alone:T1": {"T1": 0.50}}  # no STL score for T2
    assert "Against STL" not in report.build_report(partial, TASKS, METRICS).markdown


@pytest.mark.parametrize("rows", [{"alone:T1": {"T1": 0.50, "T2": 0.10}, "alone:T2": {"T2": 0.86}},
                                  {"STL": {"T1": 0.50, "T2": 0.86}}])  # fmt: skip
def test_report_against_stl_by_hand(rows):
    scores = {**healthy_scores(), **rows}
    markdown = report.build_report(scores, TASKS, METRICS).markdown
    section = markdown.split("## Against STL\n", 1)[1].split("\n## ", 1)[0]
    # EW:     I = (0.62 - 0.50) / 0.50 = 0.24, (0.85 - 0.86) / 0.86 = -0.011628
    #         dI = 100 * (0.24 - 0.011628) / 2 = 11.42, dE = 100 * 0.011628 / 2 = 0.58
    # VisATB: I = (0.66 - 0.50) / 0.50 = 0.32, (0.84 - 0.86) / 0.86 = -0.023256
    #         dI = 100 * (0.32 - 0.023256) / 2 = 14.84, dE = 100 * 0.023256 / 2 = 1.16
    assert "| model | T1 | T2 | dI % | dE % |" in section
    assert "| STL (baseline) | 50.00 | 0.8600 | - | - |" in section
    assert "| EW | 62.00 | 0.8500 | +11.42 | 0.58 |" in section
    assert "| VisATB | 66.00 | 0.8400 | +14.84 | 1.16 |" in section
    # Only the final models are compared: no start, mini, task-plus-mini, alone: or STL rows.
    assert len([line for line in section.splitlines() if line.startswith("| ")]) == 4
    assert markdown.index("## Against STL") < markdown.index("## Learning checks")


def test_report_cli_writes_the_stl_section(tmp_path, capsys):
    path, out = tmp_path / "scores.json", tmp_path / "report.md"
    path.write_text(json.dumps({**healthy_scores(), "alone:T1": {"T1": 0.50}, "alone:T2": {"T2": 0.86}}))
    assert report.main(["--scores", str(path), "--tasks", "T1,T2", "--metrics", "T1=qa,T2=caption",
                        "--output", str(out)]) == 0  # fmt: skip
    assert "| EW | 62.00 | 0.8500 | +11.42 | 0.58 |" in out.read_text()


def test_report_weights_section_states_the_non_default_choices():
    weights = {"tasks": ["T1", "T2"], "scored_tasks": ["T1", "T2"], "temperature": 0.5,
               "out_contribution": [0.1, 0.2], "in_contribution": [0.2, 0.1], "difficulty": [0.3, 0.4],
               "weights": {"final": [0.9, 1.1]}, "visatb_weights": [0.9, 1.1]}  # fmt: skip
    default = report.weights_section(weights, None)[2]
    assert default == ("Temperature 0.5; C_out: what a task's data gives the others, C_in: what it receives, "
                       "D: its difficulty (1 - V(mini) / V(task-plus-mini)).")  # fmt: skip
    chosen = {**weights, "temperature_rule": "auto", "difficulty_from": "precise", "form": "chat",
              "alpha": {"out": 1.0, "in": 0.0, "difficulty": 0.0}}  # fmt: skip
    text = report.weights_section(chosen, None)[2]
    assert text.startswith("Temperature 0.5 (auto: the smallest of 2, 1, 0.5, 0.25, 0.125")
    assert "(1 - V(mini-alone:task) / V(alone:task))" in text and "Chat form: C[i->j]" in text
    assert "Weight = 1 w_out + 0 w_in + 0 w_D (alpha of Eq. 8)." in text


# ---------------------------------------------------------------------------------------------- toy model


def test_alignment_caption_lists_shapes_in_reading_order():
    from llava.visatb.toy.benchmark import ToyScene, ToyShape
    from llava.visatb.toy.model import alignment_caption

    scene = ToyScene("white", False, (ToyShape("circle", "red", "large", 0, 0), ToyShape("square", "blue", "small", 1, 1)))
    assert alignment_caption(scene) == "white background: large red circle, top left; small blue square, center"


def test_alignment_caption_styles_look_shapes_up_by_cell_or_colour():
    import random

    from llava.visatb.toy.benchmark import ToyScene, ToyShape
    from llava.visatb.toy.model import alignment_caption

    scene = ToyScene("white", False, (ToyShape("circle", "red", "large", 0, 0), ToyShape("square", "blue", "small", 1, 1)))
    prefix = "white background: "
    assert alignment_caption(scene, "position") == prefix + "top left: large red circle; center: small blue square"
    assert alignment_caption(scene, "color") == prefix + "red: large circle, top left; blue: small square, center"
    # Centres: column/row 0 -> 1/6, 1 -> 1/2 of the side.
    assert alignment_caption(scene, "center") == prefix + "large red circle at 0.17 0.17; small blue square at 0.50 0.50"
    orders = {alignment_caption(scene, "position", random.Random(seed)) for seed in range(20)}
    assert orders == {prefix + "top left: large red circle; center: small blue square",
                      prefix + "center: small blue square; top left: large red circle"}  # fmt: skip
    assert {alignment_caption(scene, "reading", random.Random(seed)) for seed in range(20)} == {
        prefix + "large red circle, top left; small blue square, center"
    }
    one = ToyScene("gray", True, (ToyShape("triangle", "green", "small", 2, 2),))
    assert alignment_caption(one, "reading") == "noisy gray background: small green triangle, bottom right"
    with pytest.raises(ValueError, match="unknown alignment caption style 'poem'"):
        alignment_caption(scene, "poem")


def test_patch_labels_describe_each_patch_cell():
    from llava.visatb.toy.benchmark import ToyScene, ToyShape
    from llava.visatb.toy.model import patch_labels

    scene = ToyScene("gray", True, (ToyShape("triangle", "yellow", "small", 2, 1),))
    labels = patch_labels(scene)  # 6x6 patches, 2x2 per cell, row-major
    yellow = [i for i, c in enumerate(labels["color"]) if c]
    assert yellow == [4 * 6 + 2, 4 * 6 + 3, 5 * 6 + 2, 5 * 6 + 3]  # the bottom-center cell
    assert {labels["color"][i] for i in yellow} == {1 + 3}  # sorted colours: blue, green, red, yellow
    assert {labels["kind"][i] for i in yellow} == {1 + 2}  # circle, square, triangle
    assert {labels["size"][i] for i in yellow} == {1 + 1}  # sorted sizes: large, small
    assert labels["cell"][:6] == [0, 0, 1, 1, 2, 2] and labels["cell"][-1] == 8
    assert set(labels["background"]) == {1} and set(labels["noisy"]) == {1}


def test_vision_tower_pretraining_learns_the_patch_labels_and_saves_the_tower(tmp_path):
    from transformers import CLIPVisionModel

    from llava.model.tiny import TinyConfig, build_vision_tower
    from llava.visatb.toy.model import pretrain_vision_tower, write_pretrain_data

    cfg = TinyConfig(image_size=24, patch_size=4, vision_hidden_size=32, vision_intermediate_size=64)
    write_pretrain_data(tmp_path / "pre", 48, 24, seed=0)
    build_vision_tower(tmp_path / "tower", cfg)
    before = CLIPVisionModel.from_pretrained(str(tmp_path / "tower")).state_dict()
    accuracy = pretrain_vision_tower(tmp_path / "tower", tmp_path / "pre", 48, seed=0, steps=60)
    after = CLIPVisionModel.from_pretrained(str(tmp_path / "tower")).state_dict()
    assert set(before) == set(after)  # the heads are not saved with the tower
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert set(accuracy) == {"color", "kind", "size", "cell", "background", "noisy"}
    # Empty cells alone are 5/6 or more of the patches; the cell of a patch follows from its position.
    assert accuracy["cell"] > 0.9 and accuracy["color"] > 0.85


def test_toy_config_needs_two_patches_per_grid_cell():
    from llava.visatb.toy.model import toy_tiny_config

    cfg = toy_tiny_config(48)
    assert (cfg.image_size, cfg.patch_size) == (48, 8)
    with pytest.raises(ValueError, match="divisible by 6"):
        toy_tiny_config(64)


def test_pretraining_data_is_deterministic_and_disjoint_from_the_benchmark(tmp_path):
    from llava.visatb.toy.model import write_pretrain_data

    first = write_pretrain_data(tmp_path / "a", 6, 24, seed=3)
    second = write_pretrain_data(tmp_path / "b", 6, 24, seed=3)
    assert first.read_text() == second.read_text()
    assert (tmp_path / "a/images/000005.png").read_bytes() == (tmp_path / "b/images/000005.png").read_bytes()
    records = json.loads(first.read_text())
    assert {r["task"] for r in records} == {"ToyAlign"}
    assert records[0]["conversations"][0]["value"] == "<image>"


# -------------------------------------------------------------------------------------------------------- demo


# `demo` (tests/conftest.py): one session-wide run of the demo, shared with tests/test_slurm.py.


# The demo scores every toy task but the text-only one, which trains with weight 1.0.
DEMO_SCORED = ["ToyCaption", "ToyCaptionList", "ToyCellQA", "ToyBBox"]
DEMO_UNSCORED = ["ToyText"]
ALL_MODELS = ["start", "mini", *DEMO_SCORED, "VisATB", "EW"]


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_prints_every_stage_and_the_table(demo):
    stdout = demo["first"].stdout
    for k, stage in enumerate(chain_config.STAGES, 1):
        assert f"[stage {k}/9] {stage}: " in stdout
    assert "| model | ToyCaption (CIDEr) | ToyCaptionList (CIDEr) | ToyCellQA (acc %) | ToyBBox (acc %) |" in stdout
    assert re.search(r"\[demo\] finished in \d+ s", stdout)


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_scores_cover_every_model_and_task(demo):
    scores = json.loads((demo["out"] / "scores.json").read_text())
    assert sorted(scores) == sorted(ALL_MODELS)
    for model in ALL_MODELS:
        assert sorted(scores[model]) == sorted(DEMO_SCORED)
        assert all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in scores[model].values())


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_weights_file_has_the_schema_training_reads(demo):
    from llava.visatb.weights.weights_file import load_visatb_weights_file

    weights = json.loads((demo["out"] / "weights.json").read_text())
    assert set(weights) >= {"tasks", "temperature", "scored_tasks", "contribution_matrix", "out_contribution",
                            "in_contribution", "difficulty", "weights", "visatb_weights"}  # fmt: skip
    assert weights["tasks"] == list(TOY.tasks) and weights["scored_tasks"] == DEMO_SCORED
    matrix = weights["contribution_matrix"]
    assert len(matrix) == 4 and [row[i] for i, row in enumerate(matrix)] == [None] * 4
    assert sum(weights["weights"]["final"]) == pytest.approx(4.0)
    unscored = [w for t, w in zip(weights["tasks"], weights["visatb_weights"]) if t in DEMO_UNSCORED]
    assert unscored == [1.0]
    assert load_visatb_weights_file(demo["out"] / "weights.json", list(TOY.tasks)) == weights["visatb_weights"]
    weights_line = (demo["out"] / "weights.txt").read_text().strip().splitlines()[-1]
    assert weights_line == 'VISATB_WEIGHTS="' + " ".join(f"{w:.4f}" for w in weights["visatb_weights"]) + '"'


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_heatmap_is_a_png(demo):
    assert (demo["out"] / "heatmap.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_answers_exist_for_every_model_and_validation_set(demo):
    from llava.visatb.toy.benchmark import load_toy_manifest

    manifest = load_toy_manifest(demo["out"] / "data")
    for model in ALL_MODELS:
        files = sorted(f for f in (demo["out"] / "answers" / model).glob("*.json") if not f.name.endswith(".provenance.json"))
        assert len(files) == len(DEMO_SCORED), model
        for task in DEMO_SCORED:
            answer_file = next(f for f in files if f.name.startswith(task + "-val"))
            records = json.loads(answer_file.read_text())
            assert len(records) == manifest["val_counts"][task]
            assert all(isinstance(r["conversations"][1]["generative_value"], str) for r in records)
            assert {r["generator"] for r in records} == {answer_file.stem.split("_", 1)[1]}


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_report_has_a_row_per_model_and_the_checks(demo):
    text = (demo["out"] / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "(acc %)" not in line]
    labels = [row.split("|")[1].strip() for row in rows]
    for model in ALL_MODELS:
        assert report.model_label(model, DEMO_SCORED) in labels
    assert "![inter-task contribution and weights](heatmap.png)" in text
    assert "## Learning checks" in text and "## Relative improvement" in text
    assert text.count("** trained models beat the starting point") == 1


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_records_every_commands_time_and_devices_and_reports_the_cost(demo):
    record = json.loads((demo["out"] / "pipeline.json").read_text())
    items = record["costs"]["items"]
    trained = {e["item"]: e for e in items.values() if e["stage"] in ("train", "final-train")}
    assert sorted(trained) == sorted(["mini", *DEMO_SCORED, "VisATB", "EW"])
    assert all(e["gpus"] == 0 and e["processes"] == 1 and e["seconds"] > 0 for e in trained.values())
    assert trained["VisATB"]["part"] == "final" and trained["mini"]["part"] == "preparation"
    assert trained["EW"]["part"] == "other"  # a baseline: neither VisATB's preparation nor its final model
    inferred = [e for e in items.values() if e["stage"] == "infer"]
    assert {e["item"]: e["part"] for e in inferred}["start"] == "other"  # the academic form's weights skip it
    assert all(e["gpus"] == 0 and e["processes"] == 1 for e in inferred)
    text = (demo["out"] / "report.md").read_text()
    prep = sum(e["seconds"] for e in trained.values() if e["part"] == "preparation")
    ratio = prep / trained["VisATB"]["seconds"]
    assert f"Preparation training: {ratio:.2f}x the final training here" in text
    assert "R_large + N * R_mini = 1 + 4 x 0.0833333 = 1.33x" in text


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_passes_every_learning_check(demo):
    # The starting point answers (almost) every question with an alignment caption ("white background: large
    # red circle, top left"), hardly ever with a cell number (seed 0 with the default threads on the Xeon: one
    # "8" in 200 answers, none under OMP_NUM_THREADS=1), and scores no cell question; every trained model beats
    # it everywhere, the full-data models beat the mini model, and no task is flat.
    out = demo["out"]
    answers = [p for p in (out / "answers" / "start").glob("ToyCellQA-val*.json") if not p.name.endswith(".provenance.json")]
    start_answers = json.loads(answers[0].read_text())
    numbers = sum(bool(re.fullmatch(r"[1-9]", r["conversations"][1]["generative_value"])) for r in start_answers)
    assert numbers <= 0.02 * len(start_answers), numbers
    scores = json.loads((out / "scores.json").read_text())
    assert scores["start"]["ToyCellQA"] <= 0.02
    metrics = {t: TOY.metrics[t] for t in DEMO_SCORED}
    for check in report.learning_checks(scores, DEMO_SCORED, metrics):
        assert check.status == "PASS", f"{check.name}: {check.detail}"
    for task in DEMO_SCORED:  # each task's own data adds to what the mini model reaches
        assert scores[task][task] > scores["mini"][task], task
    report_text = (out / "report.md").read_text()
    printed = demo["first"].stdout + demo["first"].stderr
    assert report_text.count("**PASS**") == 3 and "WARNING: learning check failed" not in printed
    assert "own data brought" not in printed  # no task without own-data gain


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_rerun_skips_every_finished_stage(demo):
    out = demo["out"]
    watched = (out / "scores.json", out / "report.md", out / "checkpoints" / "llava-toy-visatb" / "config.json",
               out / "checkpoints" / "llava-toy-ew" / "config.json")  # fmt: skip
    before = {p: p.stat().st_mtime_ns for p in watched}
    second = run_demo(out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for k, stage in enumerate(chain_config.STAGES, 1):
        assert f"[stage {k}/9] {stage}: done earlier, skipped" in second.stdout
    assert "(0 command(s) run" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert "final-train/VisATB" in json.loads((out / "pipeline.json").read_text())["costs"]["items"]  # not lost


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_redo_recomputes_only_the_report(demo):
    out = demo["out"]
    scores_mtime = (out / "scores.json").stat().st_mtime_ns
    third = run_demo(out, "--redo", "report")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "[stage 9/9] report: report" in third.stdout and "(1 command(s) run" in third.stdout
    assert (out / "scores.json").stat().st_mtime_ns == scores_mtime


@pytest.mark.slow
@pytest.mark.e2e
def test_grouped_toy_chain_with_large_subsets_runs_end_to_end(demo, tmp_path):
    # M3IT's setting on the toy, at a quarter of the data, reusing the demo's starting checkpoint (read only):
    # two groups of two tasks, task-plus-mini sets of half of each task.
    out = tmp_path / "groups"
    env = {**os.environ, "OUTPUT_DIR": str(out), "DEMO_REDUCED": "1", "DEMO_SCALE": "0.25", "VISATB_SETUP": "skip",
           "DEMO_TOY_MODEL": str(demo["out"] / "toy_model"), "LARGE_FRACTION": "0.5",
           "TASK_GROUPS": "Describe=ToyCaption,ToyCaptionList;Locate=ToyCellQA,ToyBBox",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}  # fmt: skip
    run = subprocess.run(["bash", str(REPO / "scripts_visatb" / "demo.sh")], env=env, cwd=REPO,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "reusing" in run.stdout and not (out / "toy_model").exists()
    manifest = json.loads((out / "subsets" / "subsets.json").read_text())
    # Quarter scale: ToyCaption 300, ToyCaptionList 500, ToyCellQA 400, ToyBBox 1000, ToyText 200 records; half of
    # each of the group's tasks, plus the minis (1/12, rounded: 33.3, 83.3, 16.7) of the other tasks.
    assert manifest["plus_mini"]["Describe"]["per_task"] == {
        "ToyCaption": 150, "ToyCaptionList": 250, "ToyCellQA": 33, "ToyBBox": 83, "ToyText": 17}  # fmt: skip
    scores = json.loads((out / "scores.json").read_text())
    assert {"start", "mini", "Describe", "Locate", "VisATB"} <= set(scores)
    assert sorted(scores["Locate"]) == sorted(DEMO_SCORED)
    # The group weights by hand from scores.json: group means, C and D of two groups, softmax at T = 0.5.
    groups = {"Describe": ["ToyCaption", "ToyCaptionList"], "Locate": ["ToyCellQA", "ToyBBox"]}

    def mean(model, group):
        return sum(scores[model][t] for t in groups[group]) / 2

    gain = {g: mean(g, g) - mean("mini", g) for g in groups}
    c_out = {"Describe": (mean("Describe", "Locate") - mean("mini", "Locate")) / gain["Locate"],
             "Locate": (mean("Locate", "Describe") - mean("mini", "Describe")) / gain["Describe"]}  # fmt: skip
    c_in = {"Describe": c_out["Locate"], "Locate": c_out["Describe"]}
    d = {g: 1 - mean("mini", g) / mean(g, g) for g in groups}

    def family(values, sign):
        e = {g: math.exp(sign * v / 0.5) for g, v in values.items()}
        return {g: 2 * x / sum(e.values()) for g, x in e.items()}

    w_out, w_in, w_d = family(c_out, 1), family(c_in, -1), family(d, 1)
    final = {g: 0.25 * w_out[g] + 0.25 * w_in[g] + 0.5 * w_d[g] for g in groups}
    weights = json.loads((out / "weights.json").read_text())
    assert weights["task_groups"] == groups and weights["group_weights"] == pytest.approx(final)
    by_task = dict(zip(weights["tasks"], weights["visatb_weights"]))
    assert by_task == pytest.approx({"ToyCaption": final["Describe"], "ToyCaptionList": final["Describe"],
                                     "ToyCellQA": final["Locate"], "ToyBBox": final["Locate"], "ToyText": 1.0})  # fmt: skip
    report_md = (out / "report.md").read_text()
    assert "| Describe (CIDEr) | Locate (acc %) |" in report_md and "| Describe-plus-mini |" in report_md


@pytest.mark.slow
@pytest.mark.e2e
def test_compare_methods_reuses_the_demo_and_compares_against_stl(demo, tmp_path):
    # Runs last among the demo tests: it adds models to the demo's folder. Seed 0 of compare_methods.sh is
    # the demo's own folder, so the preparation models, VisATB and EW are reused and only the four STL models
    # train (a method the demo lacks, e.g. TLA, would train too; each method's training settings are checked
    # by test_methods_stl_and_ablations_train_the_right_models).
    out = demo["out"]
    (tmp_path / "seed0").symlink_to(out, target_is_directory=True)
    reused = [out / "checkpoints" / f"llava-toy-{slug}" / "config.json" for slug in ("mini", "visatb", "ew")]
    before = [config.stat().st_mtime_ns for config in reused]
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path), "SEEDS": "0", "METHODS": "VisATB,EW",
           "VISATB_SETUP": "skip", "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}  # fmt: skip
    for name in ("DEMO_REDUCED", "COMPARE_REDUCED"):
        env.pop(name, None)
    run = subprocess.run(["bash", str(REPO / "scripts_visatb" / "compare_methods.sh")], env=env, cwd=REPO,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert [config.stat().st_mtime_ns for config in reused] == before  # not retrained
    assert "[stage 2/9] train: done earlier; new item(s) for this configuration" in run.stdout
    assert "5 of 9 item(s) done earlier, skipped" in run.stdout  # mini, 4 task-plus-mini; 4 alone: new
    assert "[stage 6/9] final-train: done earlier, skipped" in run.stdout
    scores = json.loads((out / "scores.json").read_text())
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["baseline"] == "STL" and comparison["tasks"] == DEMO_SCORED
    assert list(comparison["models"]) == ["VisATB", "EW"]
    for model, entry in comparison["models"].items():
        relative = [(scores[model][t] - scores[f"alone:{t}"][t]) / scores[f"alone:{t}"][t] for t in DEMO_SCORED]
        assert entry["delta_I"] == pytest.approx(100 * sum(relative) / len(relative))
        assert entry["delta_E"] == pytest.approx(100 * sum(max(0.0, -r) for r in relative) / len(relative))
    assert (out / "comparison.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "| STL (baseline) |" in (out / "comparison.md").read_text()
    assert "## Against STL" in (out / "report.md").read_text() and "| EW |" in run.stdout
    marker = json.loads((out / ".done" / "final-train" / "EW.json").read_text())
    assert marker["env"]["WEIGHT_METHOD"] == "EW" and marker["env"]["VISATB_WEIGHTS_FILE"] == ""


def test_pretraining_progress_bar_follows_the_logged_losses(tmp_path, capfd):
    from llava.visatb.toy.model import run_with_progress

    script = "import time\nfor loss in (2.5, 1.25):\n    print({'loss': loss, 'epoch': 1}); time.sleep(0.05)\n"
    log = tmp_path / "pretrain.log"
    assert run_with_progress([sys.executable, "-c", script], log, 50, 25, "alignment pretraining") == 0
    err = capfd.readouterr().err
    assert "alignment pretraining" in err and "50/50" in err and "loss=1.250" in err
    assert "{'loss': 2.5, 'epoch': 1}" in log.read_text()
    assert run_with_progress([sys.executable, "-c", "import sys; sys.exit(3)"], log, 10, 5, "x") == 3
