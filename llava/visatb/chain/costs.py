"""Cost accounting of a chain: what each finished command took (wall time, devices) and which part of the method
it belongs to, recorded in WORK_DIR/pipeline.json under "costs" (the report's cost section reads it).

Parts: preparation (what VisATB's own weights need: subsets, the models its form and difficulty source
score, the weighting), final (VisATB's final model) and other (baselines, STL, ablations, the report).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llava.utils import atomic_write_json, load_json
from llava.visatb.chain.config import PipelineConfig
from llava.visatb.scores import ALONE_PREFIX, MINI, MINI_ALONE_PREFIX, START, VISATB

COSTS_KEY = "costs"  # pipeline.json: every finished item's wall time and devices


def weight_model_keys(cfg: PipelineConfig) -> set[str]:
    """The models VisATB's own weights need (its preparation cost), by form and difficulty source."""
    keys: set[str] = set()
    if cfg.form == "academic" or cfg.difficulty_from == "real":
        keys |= {MINI, *cfg.units}
    if cfg.form == "chat" or cfg.difficulty_from == "precise":
        keys |= {ALONE_PREFIX + u for u in cfg.units}
    if cfg.difficulty_from == "precise":
        keys |= {MINI_ALONE_PREFIX + u for u in cfg.units}
    if cfg.form == "chat":
        keys.add(START)
    return keys


def cost_part(cfg: PipelineConfig, stage: str, key: str) -> str:
    """preparation (what VisATB's weights need), final (VisATB's own final model) or other (baselines,
    STL, ablations, the start model's learning checks) for one item."""
    if stage in ("subsets", "weights"):
        return "preparation"
    if stage == "report":
        return "other"
    model = key.split("__", 1)[0]
    if stage.startswith("final-"):
        return "final" if model == VISATB else "other"
    return "preparation" if model in weight_model_keys(cfg) else "other"


def record_costs(cfg: PipelineConfig, done_dir: Path, path: Path) -> None:
    """Every finished item's wall time and devices (from its marker in `done_dir`), in `path` (pipeline.json)
    under "costs"."""
    items: dict[str, dict[str, Any]] = {}
    for stage in cfg.stages:
        folder = done_dir / stage
        for marker in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            done = load_json(marker)
            key = str(done.get("item", marker.stem))
            items[f"{stage}/{key}"] = {"stage": stage, "item": key, "part": cost_part(cfg, stage, key),
                                       "seconds": done.get("seconds"), "gpus": done.get("gpus"),
                                       "processes": done.get("processes")}  # fmt: skip
    config = load_json(path) if path.is_file() else cfg.to_json()
    config[COSTS_KEY] = {"items": items, "units": len(cfg.units), "mini_fraction": cfg.mini_fraction,
                         "large_fraction": cfg.large_fraction}  # fmt: skip
    atomic_write_json(path, config)


def item_devices(stage: str, log: str) -> dict[str, Any]:
    """What a command ran on, from its log: {"gpus": n, "processes": p} (either may be None when unknown).

    Training logs carry the launcher's line (scripts_visatb/_launch.sh): `deepspeed --num_gpus N`, or the
    CPU fallback with its process count; inference logs `[inference] <model> loaded on <device>`."""
    if stage in ("train", "final-train"):
        gpus = re.search(r"^\[visatb\] deepspeed .*--num_gpus (\d+)", log, flags=re.M)
        if gpus:
            return {"gpus": int(gpus.group(1)), "processes": int(gpus.group(1))}
        cpu = re.search(r"falling back to the CPU with (\d+) process", log)
        if cpu:
            return {"gpus": 0, "processes": int(cpu.group(1))}
        return {"gpus": None, "processes": None}
    if stage in ("infer", "final-infer"):
        devices = re.findall(r"^\[inference\] .* loaded on (\S+)", log, flags=re.M)
        if devices:
            return {"gpus": int(devices[0].startswith("cuda")), "processes": 1}
        return {"gpus": None, "processes": 1 if "already complete" in log else None}
    return {"gpus": 0, "processes": 1}
