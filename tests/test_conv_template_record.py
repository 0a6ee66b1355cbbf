"""Training records the conversation template in the checkpoint; run_llava and the CLI chat load with it."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from train_helpers import make_toy_data, train_flags

from llava.eval import run_llava
from llava.generation import LlavaGenerator, open_image
from llava.serve import cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tiny_llava, tmp_path_factory) -> str:
    """One training step with --version v1 into a folder named as the finetune script names it (no "v1")."""
    from llava.train.train import train

    folder = tmp_path_factory.mktemp("conv_record")
    out = folder / "visatb-academic-vicuna-7b-EW"
    train(args=train_flags(tiny_llava, make_toy_data(folder / "toy"), out, "--max_steps", "1",
                           "--save_strategy", "no"))  # fmt: skip
    return str(out)


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("conv_picture") / "p.png"
    Image.new("RGB", (30, 20), (200, 30, 60)).save(path)
    return str(path)


def test_training_writes_the_template_into_config(trained):
    config = json.loads(open(f"{trained}/config.json").read())
    assert config["conv_template"] == "v1"


def test_run_llava_uses_the_recorded_template_not_the_folder_name(trained, picture, capsys):
    generator = LlavaGenerator.from_pretrained(trained, conv_mode="vicuna_v1", max_new_tokens=4, verbose=False)
    expected = generator.generate(["What is in the image?"], [open_image(picture)])[0]
    assert run_llava.main(["--model-path", trained, "--image-file", picture, "--query", "What is in the image?",
                           "--temperature", "0", "--max_new_tokens", "4"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert out.endswith(expected + "\n")
    assert "[conversation template 'v1': recorded in" in err and "at training time" in err


def test_a_checkpoint_without_the_record_falls_back_to_the_name_and_says_so(lively_checkpoint, picture, capsys):
    assert run_llava.main(["--model-path", lively_checkpoint, "--image-file", picture, "--query", "Hi?",
                           "--temperature", "0", "--max_new_tokens", "2"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "[conversation template 'llava_v0': guessed from the folder name 'llava-tiny'" in err


def test_serve_cli_uses_the_recorded_template(trained, picture, capsys, monkeypatch, tmp_path):
    renamed = tmp_path / "my-chat-model"
    shutil.copytree(trained, renamed)
    monkeypatch.setattr("builtins.input", lambda prompt="": "")  # ends the chat at once
    assert cli.main(["--model-path", str(renamed), "--image-file", picture, "--temperature", "0"]) == 0
    assert "[conversation template 'v1': recorded in" in capsys.readouterr().err
    assert cli.main(["--model-path", str(renamed), "--image-file", picture, "--conv-mode", "llava_v0"]) == 0
    assert "'llava_v0': given with --conv-mode; the checkpoint was trained with 'v1'" in capsys.readouterr().err


def test_a_generator_loaded_without_a_template_takes_the_recorded_one(trained, capsys):
    # The web demo's worker loads this way: the folder name alone would give llava_v0.
    generator = LlavaGenerator.from_pretrained(trained, conv_mode=None, max_new_tokens=2)
    assert generator.conv_mode == "v1"
    assert "[llava] conversation template 'v1': recorded in" in capsys.readouterr().err
