"""Shared fixtures: tiny offline LLaVA checkpoints and the demo, each built once per test session and only
when a test asks for it (a unit run, `-m "not slow"`, builds no demo), and the one-thread setting.

Markers (pyproject.toml): `slow` for tests that build the demo or a toy model, train, run a chain, Slurm,
torchrun/DDP or ZeRO-3, or otherwise take more than a few seconds; `e2e` for user-facing commands run end to
end. `bash scripts_visatb/test.sh -m "not slow"` is the quick unit run.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> dict:
    """A full tiny LLaVA checkpoint (`full`), its `base` LM and `vision_tower`, plus the reference state."""
    from llava.model.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), kind="full")


@pytest.fixture(scope="session")
def lively_checkpoint(tiny_llava, tmp_path_factory) -> str:
    """The tiny full checkpoint (folder `llava-tiny`) with larger random weights, so that greedy answers depend on
    the prompt and image.

    With the default init (std 0.02) every prompt ending in "ASSISTANT:" gets nearly the same answer, which
    would make batch-versus-single and order comparisons meaningless. Tests only read it.
    """
    import torch

    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    path = tmp_path_factory.mktemp("lively") / "llava-tiny"
    shutil.copytree(tiny_llava["full"], path)
    model = LlavaLlamaForCausalLM.from_pretrained(path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests, restored after it (`pytest.mark.usefixtures("one_torch_thread")`).

    The tiny models' matrices are far too small for threads to pay; on a busy small machine OpenMP threads
    wait on each other and make generation and training many times slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> dict:
    """One run of the demo (`scripts_visatb/demo.sh`, local executor, the README's default threads) for the session.

    Built only when a test asks for it; every such test is marked `slow`. `scores` and `report` are kept as
    the first run wrote them: later tests add models to the folder."""
    from demo_helpers import run_demo

    out = tmp_path_factory.mktemp("demo")
    first = run_demo(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return {"out": out, "first": first, "scores": json.loads((out / "scores.json").read_text()),
            "report": (out / "report.md").read_text()}  # fmt: skip
