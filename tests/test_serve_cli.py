"""llava.serve.cli's upstream flags: --load-8bit / --load-4bit reach load_pretrained_model."""

import pytest
import torch
from PIL import Image

from llava.model import builder
from llava.serve import cli


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "picture.png"
    Image.new("RGB", (30, 20), (20, 130, 60)).save(path)
    return str(path)


@pytest.mark.parametrize("flag, expected", [("--load-8bit", (True, False)), ("--load_4bit", (False, True)), (None, (False, False))])
def test_quantisation_flags_reach_the_loader(picture, monkeypatch, capsys, flag, expected):
    seen = {}

    def fake_load(model_path, model_base, model_name, load_8bit=False, load_4bit=False, **kwargs):
        seen.update(path=model_path, bits=(load_8bit, load_4bit))
        raise ValueError("stop here")

    monkeypatch.setattr(builder, "load_pretrained_model", fake_load)
    argv = ["--model-path", "some/llava-model", "--image-file", picture] + ([flag] if flag else [])
    assert cli.main(argv) == 1
    assert seen == {"path": "some/llava-model", "bits": expected}
    assert "error: stop here" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_4bit_on_a_cpu_is_a_clear_error(tiny_llava, picture, capsys):
    assert cli.main(["--model-path", tiny_llava["full"], "--image-file", picture, "--load-4bit", "--device", "cpu"]) == 1
    assert "8-bit / 4-bit loading needs a CUDA device (bitsandbytes)" in capsys.readouterr().err


def test_8bit_and_4bit_together_are_refused(picture, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--model-path", "m", "--image-file", picture, "--load-8bit", "--load-4bit"])
    assert done.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
