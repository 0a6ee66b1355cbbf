"""Faults a user meets outside the model: file modes, unsafe names, outputs that are inputs, wrong task labels."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llava.utils import atomic_write_json, atomic_write_text
from llava.visatb import subsets

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".py", ""), REPO / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "sub" / "b.json", {"a": 1})
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "a.txt") == 0o666 & ~umask
    assert mode_of(tmp_path / "sub" / "b.json") == 0o666 & ~umask
    assert json.loads((tmp_path / "sub" / "b.json").read_text()) == {"a": 1}


def qa_record(rid: str, task: str) -> dict:
    return {"id": rid, "task": task, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}


@pytest.mark.parametrize("task", ["../evil", "a/b", "..", "x\\y"])
def test_subsets_refuse_task_names_that_are_paths(tmp_path, task):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([qa_record("1", "A"), qa_record("2", task), qa_record("3", "A")]))
    out = tmp_path / "out" / "subsets"
    with pytest.raises(ValueError, match=r"task name .* cannot be used in a file name"):
        subsets.write_subsets(data, out)
    assert not out.exists()
    assert not list(tmp_path.glob("**/evil*"))


def test_subsets_refuse_a_manifest_that_is_the_data_file(tmp_path):
    data = tmp_path / "data.json"
    records = [qa_record(str(i), "AB"[i % 2]) for i in range(6)]
    data.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="--manifest .* is the same file as the input data file"):
        subsets.write_subsets(data, tmp_path / "out", manifest_path=data)
    assert json.loads(data.read_text()) == records


def test_weighting_refuses_to_write_over_its_scores(tmp_path, capsys):
    scores = tmp_path / "scores.json"
    table = {"mini": {"A": 0.2, "B": 0.3}, "A": {"A": 0.5, "B": 0.35}, "B": {"A": 0.25, "B": 0.6}}
    scores.write_text(json.dumps(table))
    cli = load_script("weighting_visatb.py")
    assert cli.main(["--scores", str(scores), "--tasks", "A,B", "--output", str(scores)]) == 2
    assert "--output" in capsys.readouterr().err
    assert json.loads(scores.read_text()) == table
    assert cli.main(["--scores", str(scores), "--tasks", "A,B", "--plot", str(scores)]) == 2
    assert json.loads(scores.read_text()) == table
    assert cli.main(["--scores", str(scores), "--tasks", "A,B", "--output", str(tmp_path / "w.json"),
                     "--plot", str(tmp_path / "w.json")]) == 2  # fmt: skip


def test_merge_chunks_refuses_to_write_over_the_questions(tmp_path, capsys):
    from llava.eval import merge_chunks

    questions = tmp_path / "q.jsonl"
    text = "".join(json.dumps({"question_id": i, "text": "q"}) + "\n" for i in range(2))
    questions.write_text(text)
    (tmp_path / "ans").mkdir()
    (tmp_path / "ans" / "1_0.jsonl").write_text("".join(
        json.dumps({"question_id": i, "text": "a", "model_id": "m"}) + "\n" for i in range(2)))  # fmt: skip
    argv = ["--question-file", str(questions), "--answers-dir", str(tmp_path / "ans"), "--num-chunks", "1"]
    assert merge_chunks.main([*argv, "--output-file", str(questions)]) == 1
    assert "--output-file" in capsys.readouterr().err and questions.read_text() == text
    assert merge_chunks.main([*argv, "--output-file", str(tmp_path / "ans" / "1_0.jsonl")]) == 1
    assert "chunk" in capsys.readouterr().err


def answer(rid, task, reference="yes", prediction="yes", generator="m"):
    record = {"id": rid, "conversations": [
        {"from": "human", "value": "q"}, {"from": "gpt", "value": reference, "generative_value": prediction}],
        "generator": generator}  # fmt: skip
    if task is not None:
        record["task"] = task
    return record


def run_eval(script, *args):
    return subprocess.run([sys.executable, str(REPO / "eval" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=60, cwd=REPO)  # fmt: skip


def test_eval_refuses_records_of_another_task(tmp_path):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps([answer("a", "GQA"), answer("b", "ShareGPT4V")]))
    scores = tmp_path / "scores.json"
    proc = run_eval("qa.py", "-a", path, "--scores", scores, "--model-key", "mini", "--task", "GQA")
    assert proc.returncode == 1
    assert "record 1 (id 'b') belongs to task 'ShareGPT4V', not --task 'GQA'" in proc.stderr
    assert not scores.exists()
    path.write_text(json.dumps([answer("a", "GQA"), answer("b", None)]))
    proc = run_eval("qa.py", "-a", path, "--scores", scores, "--model-key", "mini", "--task", "GQA")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(scores.read_text()) == {"mini": {"GQA": 1.0}}


def test_eval_refuses_answers_of_mixed_generators(tmp_path):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps([answer("a", "GQA"), answer("b", "GQA", generator="other")]))
    proc = run_eval("qa.py", "-a", path)
    assert proc.returncode == 1
    assert "written by 2 generators ('m', 'other')" in proc.stderr


def test_eval_refuses_a_scores_table_that_is_the_answer_file(tmp_path):
    path = tmp_path / "answers.json"
    content = json.dumps([answer("a", "GQA")])
    path.write_text(content)
    proc = run_eval("qa.py", "-a", path, "--scores", path, "--model-key", "mini", "--task", "GQA")
    assert proc.returncode == 2 and "--scores" in proc.stderr
    assert path.read_text() == content


def test_training_stores_the_vision_tower_as_an_absolute_path(tiny_llava, tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    shutil.copytree(tiny_llava["vision_tower"], tmp_path / "towers" / "tower")
    monkeypatch.chdir(tmp_path)
    model = LlavaLlamaForCausalLM.from_pretrained(tiny_llava["base"])
    args = SimpleNamespace(vision_tower="towers/tower", mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                           mm_projector_type="mlp2x_gelu", pretrain_mm_mlp_adapter=None)  # fmt: skip
    model.get_model().initialize_vision_modules(args)
    assert model.config.mm_vision_tower == str(tmp_path / "towers" / "tower")


def test_a_vision_tower_path_that_does_not_resolve_names_the_checkpoint_config(tiny_llava, tmp_path, monkeypatch):
    import shutil

    from llava.model.builder import load_pretrained_model

    checkpoint = tmp_path / "llava-moved"
    shutil.copytree(tiny_llava["full"], checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["mm_vision_tower"] = "towers/my-tower"  # relative to the folder training ran in
    (checkpoint / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        load_pretrained_model(str(checkpoint), None, "llava-moved", device="cpu")
    message = str(error.value)
    assert f"{checkpoint / 'config.json'}" in message and "mm_vision_tower 'towers/my-tower'" in message
    assert "relative to" in message

    shutil.copytree(tiny_llava["vision_tower"], checkpoint / "towers" / "my-tower")  # resolved against the checkpoint
    _, model, processor, _ = load_pretrained_model(str(checkpoint), None, "llava-moved", device="cpu", verbose=False)
    assert processor is not None and model.get_vision_tower().is_loaded


def test_load_json_names_a_folder_and_a_file_that_is_not_utf8(tmp_path):
    from llava.utils import load_json

    with pytest.raises(FileNotFoundError, match=r"is a folder, not a file"):
        load_json(tmp_path)
    bad = tmp_path / "latin1.json"
    bad.write_bytes('[{"id": "\xe9"}]'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.json: not UTF-8 text \(byte 9\)"):
        load_json(bad)


def test_subsets_refuse_an_output_dir_that_is_a_file_and_zero_validation_records(tmp_path, capsys):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([qa_record(str(i), "AB"[i % 2]) for i in range(6)]))
    (tmp_path / "taken").write_text("x")
    assert subsets.main(["--data", str(data), "--output-dir", str(tmp_path / "taken")]) == 2
    assert "--output-dir" in capsys.readouterr().err
    assert subsets.main(["--data", str(data), "--output-dir", str(tmp_path / "out"), "--val-per-task", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_check_data_fails_an_empty_data_file(tmp_path, capsys):
    from llava.visatb import check_data

    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert check_data.main(["--data", str(empty)]) == 1
    assert "holds no records" in capsys.readouterr().out


def test_merge_chunks_needs_at_least_one_chunk(tmp_path, capsys):
    from llava.eval import merge_chunks

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "text": "q"}) + "\n")
    code = merge_chunks.main(["--question-file", str(questions), "--answers-dir", str(tmp_path), "--num-chunks", "0",
                              "--output-file", str(tmp_path / "m.jsonl")])  # fmt: skip
    assert code == 1 and "--num-chunks must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "-1"], "--temperature must be >= 0"),
        (["--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
        (["--num_beams", "0"], "--num_beams must be >= 1"),
        (["--top_p", "1.5"], "--top_p must be in (0, 1]"),
    ],
)
def test_inference_checks_generation_flags_before_loading(tmp_path, capsys, flags, message):
    cli = load_script("inference_visatb.py")
    questions = tmp_path / "q.json"
    questions.write_text("[]")
    code = cli.main(["--model-path", str(tmp_path / "llava-x"), "--question-file", str(questions),
                     "--answers-folder", str(tmp_path / "a"), *flags])  # fmt: skip
    assert code == 2 and message in capsys.readouterr().err


def test_inference_names_a_missing_model_folder_and_an_answers_folder_that_is_a_file(tmp_path, capsys):
    cli = load_script("inference_visatb.py")
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps([qa_record("1", "GQA")]))
    code = cli.main(["--model-path", str(tmp_path / "ckpt" / "llava-x"), "--question-file", str(questions),
                     "--answers-folder", str(tmp_path / "a")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "model folder" in err and "llava-x: no such folder" in err
    (tmp_path / "taken").write_text("x")
    from llava.answers.validation_answers import InferenceJob, run_inference

    def must_not_load():
        raise AssertionError("loaded")

    job = InferenceJob(str(questions), str(tmp_path / "taken"), "m", progress=False, settings={})
    with pytest.raises(NotADirectoryError, match=r"--answers-folder .*taken is a file, not a folder"):
        run_inference(job, must_not_load)


def test_training_refuses_an_output_dir_that_is_a_file_and_a_zero_max_length(tiny_llava, tmp_path, capsys):
    from train_helpers import make_toy_data, train_flags

    from llava.train.train import train

    toy = make_toy_data(tmp_path / "toy")
    (tmp_path / "taken").write_text("x")
    with pytest.raises(SystemExit):
        train(args=train_flags(tiny_llava, toy, tmp_path / "taken", "--max_steps", "1"))
    assert "--output_dir" in capsys.readouterr().err
    flags = train_flags(tiny_llava, toy, tmp_path / "out", "--max_steps", "1")
    flags[flags.index("--model_max_length") + 1] = "0"
    with pytest.raises(SystemExit):
        train(args=flags)
    assert "--model_max_length must be at least 1" in capsys.readouterr().err


def test_the_chain_says_where_relative_paths_are_taken_from(tmp_path, capsys, monkeypatch):
    from llava.visatb.chain import cli as chain_cli

    monkeypatch.chdir(tmp_path)
    code = chain_cli.main(["--work-dir", "w", "--data", "train.json", "--task-preset", "academic", "--val-dir", "."])
    assert code == 2
    assert f"--data train.json: no such file (the entire multi-task training file); relative paths are taken from {tmp_path}" in capsys.readouterr().err
