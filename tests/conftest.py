"""Shared fixtures: tiny offline LLaVA checkpoints and the demo, each built once per test session."""

from __future__ import annotations

import json
import os

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
def demo(tmp_path_factory) -> dict:
    """One run of the demo (`scripts_visatb/demo.sh`, local executor, the README's default threads) for the session.

    `scores` and `report` are kept as the first run wrote them: later tests add models to the folder."""
    from demo_helpers import run_demo

    out = tmp_path_factory.mktemp("demo")
    first = run_demo(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return {"out": out, "first": first, "scores": json.loads((out / "scores.json").read_text()),
            "report": (out / "report.md").read_text()}  # fmt: skip
