"""The toy starting checkpoint's build is reused only for the same settings, benchmark format included."""

from __future__ import annotations

import json

import pytest

from llava.visatb.toy import benchmark as toy_benchmark
from llava.visatb.toy import model as toy_model


class BuildStarted(Exception):
    pass


def _finished_build(bench, out, seed=0):
    """A manifest as a finished build of `bench` leaves it (the parts are empty folders: only reuse is tested)."""
    benchmark = toy_benchmark.load_toy_manifest(bench)
    pretrain = {"images": toy_model.DEFAULT_PRETRAIN_IMAGES, "steps": toy_model.DEFAULT_PRETRAIN_STEPS,
                "batch_size": toy_model.DEFAULT_PRETRAIN_BATCH, "lr": toy_model.DEFAULT_PRETRAIN_LR,
                "tower_steps": toy_model.DEFAULT_TOWER_STEPS}  # fmt: skip
    parts = {name: str(out / name) for name in ("base", "vision_tower", "projector", "start")}
    for path in parts.values():
        (out / path).mkdir(parents=True)
    manifest = {**parts, "settings": toy_model._settings(benchmark, pretrain, seed), "config": {}}
    (out / toy_model.MANIFEST_NAME).write_text(json.dumps(manifest))
    return manifest


def test_a_finished_build_is_reused_and_a_new_benchmark_format_rebuilds(tmp_path, monkeypatch):
    bench, out = tmp_path / "bench", tmp_path / "model"
    toy_benchmark.generate_toy_benchmark(bench, seed=0, scale=0.002, image_size=48)
    manifest = _finished_build(bench, out)
    assert manifest["settings"]["benchmark_format"] == toy_benchmark.FORMAT_VERSION

    def no_build(*args, **kwargs):
        raise BuildStarted

    monkeypatch.setattr(toy_model, "write_pretrain_data", no_build)
    assert toy_model.build_toy_model(bench, out) == manifest  # same settings: nothing is built

    # The benchmark folder now says another format (its text trains the tokenizer): the build must start again.
    bench_manifest = json.loads((bench / "toy_benchmark.json").read_text())
    bench_manifest["format_version"] = toy_benchmark.FORMAT_VERSION - 1
    (bench / "toy_benchmark.json").write_text(json.dumps(bench_manifest))
    with pytest.raises(BuildStarted):
        toy_model.build_toy_model(bench, out)
    assert not (out / toy_model.MANIFEST_NAME).exists()  # the stale manifest went first
