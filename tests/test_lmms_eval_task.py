"""`python -m llava.eval.lmms_eval_task`: the lmms-eval task it writes for a question file in LLaVA's format.

lmms-eval itself reads such a task in tests/test_convert_to_hf.py (the second environment); here the files are
read back as lmms-eval reads them: the YAML with its `!function` tags, utils.py imported as a module.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from llava.eval import lmms_eval_task

REPO = Path(__file__).resolve().parents[1]


class TaskLoader(yaml.SafeLoader):
    """lmms-eval's `!function module.name` tag, read as its text."""


TaskLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


@pytest.fixture
def question_file(tmp_path):
    images = tmp_path / "my images"  # a space: the paths must stay one value in YAML and in Python
    images.mkdir()
    Image.new("RGB", (12, 7), (200, 10, 10)).save(images / "red.png")
    records = [{"id": "a", "image": "red.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red"}]}]  # fmt: skip
    path = tmp_path / "val's.json"
    path.write_text(json.dumps(records))
    return path, images, records


def test_the_task_reads_the_records_images_prompts_and_targets(question_file, tmp_path):
    path, images, records = question_file
    yaml_file = lmms_eval_task.write_task(tmp_path / "tasks", "toy_qa", path, images, max_new_tokens=6)
    task = yaml.load(yaml_file.read_text(), Loader=TaskLoader)
    assert task["task"] == "toy_qa" and task["test_split"] == "test" and task["output_type"] == "generate_until"
    assert task["dataset_path"] == "json" and task["dataset_kwargs"]["data_files"]["test"] == str(path.resolve())
    assert task["generation_kwargs"] == {"max_new_tokens": 6, "temperature": 0, "do_sample": False}
    assert task["doc_to_text"] == "!function utils.doc_to_text"
    assert [m["metric"] for m in task["metric_list"]] == ["exact_match"]

    spec = importlib.util.spec_from_file_location("utils", tmp_path / "tasks" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    (image,) = utils.doc_to_visual(records[0])
    assert image.size == (12, 7) and image.getpixel((0, 0)) == (200, 10, 10)
    assert utils.doc_to_text(records[0]) == "What colour is it?"
    assert utils.doc_to_target(records[0]) == "red"


@pytest.mark.e2e
def test_the_command_writes_the_task_and_names_bad_input(question_file, tmp_path):
    path, images, _ = question_file
    command = [sys.executable, "-m", "llava.eval.lmms_eval_task", "--question-file", str(path), "--image-folder",
               str(images), "--output-dir", str(tmp_path / "tasks"), "--task", "toy_qa"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"--tasks toy_qa --include_path {tmp_path / 'tasks'}" in done.stdout
    assert yaml.load((tmp_path / "tasks" / "toy_qa.yaml").read_text(), Loader=TaskLoader)[
        "generation_kwargs"]["max_new_tokens"] == 128  # fmt: skip

    missing = subprocess.run([*command[:4], str(tmp_path / "nope.json"), *command[5:]], cwd=REPO,
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert missing.returncode == 2 and f"--question-file {tmp_path / 'nope.json'}: no such file" in missing.stderr
    no_images = subprocess.run([*command[:6], str(tmp_path / "no images"), *command[7:]], cwd=REPO,
                               capture_output=True, text=True, check=False)  # fmt: skip
    assert no_images.returncode == 2 and f"--image-folder {tmp_path / 'no images'}: no such folder" in no_images.stderr
    bad_name = subprocess.run([*command[:-1], "toy-qa"], cwd=REPO, capture_output=True, text=True, check=False)
    assert bad_name.returncode == 2 and "--task 'toy-qa': use letters, digits and '_'" in bad_name.stderr


@pytest.mark.parametrize(
    ("record", "message"),
    [({"id": "q7", "conversations": [{"from": "human", "value": "?"}, {"from": "gpt", "value": "a"}]},
      "record 1 (id 'q7'): no 'image'"),
     ({"id": "q7", "image": "red.png", "conversations": [{"from": "human", "value": "?"}]},
      "record 1 (id 'q7'): 'conversations' must start with a human turn and a gpt turn"),
     ({"id": "q7", "image": "red.png", "conversations": ["?", "a"]},
      "record 1 (id 'q7'): 'conversations' must start with a human"),
     ("not a record", "record 1: no 'image'")],
)  # fmt: skip
def test_a_record_lmms_eval_could_not_answer_is_named_before_anything_is_written(question_file, tmp_path, record,
                                                                                 message):  # fmt: skip
    path, images, records = question_file
    path.write_text(json.dumps([*records, record]))
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        lmms_eval_task.write_task(tmp_path / "tasks", "toy_qa", path, images, max_new_tokens=6)
    assert not (tmp_path / "tasks").exists()
