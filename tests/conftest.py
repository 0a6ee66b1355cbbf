"""Shared fixtures: tiny offline LLaVA checkpoints built once per test session."""

from __future__ import annotations

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
