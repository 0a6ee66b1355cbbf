"""Shared set-up of the training tests: a toy multi-task dataset with images, and the command-line flags."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}
TASKS = ["ColorQA", "Caption", "Text"]


def write_projector(reference_state: dict, path: Path) -> str:
    """The tiny model's projector as an `mm_projector.bin`, as LLaVA's pretraining stage writes it."""
    projector = {k: v.clone() for k, v in reference_state.items() if "mm_projector." in k}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(projector, path)
    return str(path)


def color_records(image_names: dict[str, str]) -> list[dict]:
    """Two image tasks and one text-only task, two samples each: a small, learnable batch."""
    records = []
    for i, (color, image) in enumerate(image_names.items()):
        records.append({
            "id": f"color-{i}", "image": image, "task": "ColorQA",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is the image?"},
                {"from": "gpt", "value": color},
            ],
        })
        if i < 2:
            records.append({
                "id": f"caption-{i}", "image": image, "task": "Caption",
                "conversations": [
                    {"from": "human", "value": "Describe the image.\n<image>"},
                    {"from": "gpt", "value": f"A {color} square."},
                ],
            })
    records.append({
        "id": "text-0", "task": "Text",
        "conversations": [
            {"from": "human", "value": "Count to three."},
            {"from": "gpt", "value": "one two three"},
            {"from": "human", "value": "And then?"},
            {"from": "gpt", "value": "four"},
        ],
    })
    return records


def make_toy_data(folder: Path) -> dict[str, str]:
    """Images (one per colour, not square, so `pad` matters) and `train.json` with ColorQA/Caption/Text records."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = {}
    for color, rgb in COLORS.items():
        Image.new("RGB", (40, 24), rgb).save(images / f"{color}.png")
        names[color] = f"{color}.png"
    data = folder / "train.json"
    data.write_text(json.dumps(color_records(names), indent=1))
    return {"data": str(data), "images": str(images)}


def train_flags(tiny: dict, data: dict, output_dir, *extra: str) -> list[str]:
    """The finetune script's flags for the tiny model on the toy data (CPU, fp32, a few steps).

    `tiny` holds the `base` LM and `vision_tower` folders and, optionally, a `projector` file.
    """
    return [
        "--model_name_or_path", tiny["base"],
        "--version", "v1",
        "--data_path", data["data"],
        "--image_folder", data["images"],
        "--vision_tower", tiny["vision_tower"],
        *(["--pretrain_mm_mlp_adapter", tiny["projector"]] if tiny.get("projector") else []),
        "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2",
        "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False",
        "--image_aspect_ratio", "pad",
        "--group_by_modality_length", "True",
        "--task_names", ",".join(TASKS),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "6",
        "--learning_rate", "2e-3",
        "--lr_scheduler_type", "constant",
        "--weight_decay", "0.",
        "--logging_steps", "1",
        "--model_max_length", "256",
        "--lazy_preprocess", "True",
        "--report_to", "none",
        "--disable_tqdm", "True",
        "--seed", "0",
        *extra,
    ]


def log_history(output_dir) -> list[dict]:
    """The training logs (one dict per logging step) that `trainer.save_state()` wrote."""
    return json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]


def step_logs(output_dir) -> list[dict]:
    return [entry for entry in log_history(output_dir) if "loss" in entry]


def run_subprocess(command: list[str], env_extra: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    """Run a command from the repository root, offline, on the CPU; fail with its output when it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env_extra or {})}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command[:4])} ... failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, for a torch.distributed rendezvous (torchrun, mp.spawn)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PYTHON = sys.executable
