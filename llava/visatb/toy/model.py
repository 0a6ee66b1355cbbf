"""The toy starting checkpoint of the demo: a tiny 'Vicuna', a frozen CLIP-style tower and a pretrained projector.

LLaVA-1.5 fine-tuning starts from Vicuna plus a projector pretrained on image captions. The toy world has
the same three parts, built offline from `llava/model/tiny.py`:

- a SentencePiece tokenizer trained on the toy benchmark's text and the conversation templates;
- a small CLIP vision tower with 2x2 patches per cell of the toy images' 3x3 grid. Real CLIP arrives
  pretrained; the toy one gets the cheapest stand-in: 300 steps of per-patch attribute prediction on the
  pretraining images (the colour, kind and size of the shape in the patch's grid cell, the cell, the
  background), read from the hidden layer LLaVA selects (`mm_vision_select_layer -2`). The heads are
  dropped and the tower stays frozen from then on, as in LLaVA. (With a random frozen tower the LM could
  read colours but hardly shapes: shape questions stayed at chance and grounding near 0.);
- a tiny LLaMA and an `mlp2x_gelu` projector, trained together for 1500 steps on alignment
  captions of separate pretraining images (the toy LM has never seen language, so unlike LLaVA's stage 1
  it trains too). Each caption lists the shapes with size, colour, kind and grid cell, in one of three
  styles (see `alignment_caption`).

The pretraining is a real run of `llava.train.train` (`--version plain`). Its checkpoint is then split
into the parts a LLaVA user knows:

    <out>/base/                       tokenizer + LLaMA            (BASE_MODEL_PATH)
    <out>/vision_tower/               CLIP tower + processor       (VISION_TOWER)
    <out>/projector/mm_projector.bin  pretrained projector         (PRETRAIN_MM_MLP_ADAPTER)
    <out>/llava-toy-start/            config + projector: the untrained starting point as a checkpoint,
                                      loaded with model_base <out>/base (scored as model key `start`)
    <out>/toy_model.json              what was built, written last (a finished build is reused)

    python -m llava.visatb.toy.model --benchmark data/toy --output-dir checkpoints/toy
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from llava.utils import atomic_write_json, load_json
from llava.visatb.toy.benchmark import (
    BACKGROUNDS,
    COLORS,
    GRID,
    SHAPES,
    SIZES,
    load_toy_manifest,
    random_scene,
    render_scene,
    toy_corpus,
)

MANIFEST_NAME = "toy_model.json"
FORMAT_VERSION = 5
START_NAME = "llava-toy-start"
PRETRAIN_TASK = "ToyAlign"
# A patch of half a grid cell sees part of a shape, which makes its kind and size easy to read off; with a
# whole cell per patch the tiny model learned colours and positions but not kinds in the time budget.
PATCHES_PER_SIDE = 2 * GRID

# Sized for the 2-core CPUs the demo targets: 1500 pretraining steps of batch 16 take one to three minutes
# there (docs/toy-benchmark-history.md has the timings). The alignment pretraining sits on a plateau for ~250
# steps (the LM learning to read image tokens at all) before the loss falls; a constant learning rate gets it
# over the plateau within the default steps, a cosine one not.
TOY_SIZES: dict[str, int] = {
    "vocab_size": 1000,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
    "vision_hidden_size": 256,
    "vision_intermediate_size": 512,
    "vision_layers": 2,
    "vision_heads": 2,
    "model_max_length": 256,
}
DEFAULT_PRETRAIN_IMAGES = 3000
DEFAULT_PRETRAIN_STEPS = 1500
DEFAULT_PRETRAIN_BATCH = 16
DEFAULT_PRETRAIN_LR = 1e-3
PRETRAIN_LOGGING_STEPS = 25
# The tower's attribute pretraining: a small part of the build (under a minute on 2 cores).
DEFAULT_TOWER_STEPS = 300
TOWER_BATCH = 64
TOWER_LR = 1e-3


def toy_tiny_config(image_size: int, seed: int = 0):
    """The `TinyConfig` of the toy model for images of `image_size` pixels: 2x2 vision patches per grid cell."""
    from llava.model.tiny import TinyConfig

    if image_size % PATCHES_PER_SIDE:
        raise ValueError(
            f"toy images of {image_size} px do not split into {PATCHES_PER_SIDE}x{PATCHES_PER_SIDE} whole patches "
            f"(2x2 per grid cell); generate the benchmark with --image-size divisible by {PATCHES_PER_SIDE} (e.g. 48)"
        )
    return TinyConfig(**TOY_SIZES, image_size=image_size, patch_size=image_size // PATCHES_PER_SIDE, seed=seed)


ALIGNMENT_STYLES = ("reading", "position", "color", "center")


def alignment_caption(scene, style: str = "reading", rng: random.Random | None = None) -> str:
    """An alignment caption of the scene in one of four styles.

    `reading`: every shape in reading order, attributes first (`large red circle, top left; ...`);
    `position`: each shape's grid cell first (`top left: large red circle; ...`);
    `color`: each shape's colour first (`red: large circle, top left; ...`);
    `center`: each shape with the x and y of its centre as fractions of the side (`large red circle at
    0.17 0.17; ...`), the toy LM's only contact with numbers, as Vicuna arrives knowing them.
    The last three list the shapes in a random order (from `rng`), so writing a shape's attributes after its
    cell or colour means looking that cell or colour up in the image. Every caption begins with the
    background (`noisy gray background: ...`), as a stage-1 caption describes the whole image; without it
    the starting point answered region-description prompts with a bare shape phrase and scored above the
    mini model there. (A prefix that also gave the number of shapes made the counting task nearly free for
    the mini model.) No style writes a box: the grounding
    format `[x1, y1, x2, y2]` is learned from grounding data. (With no numbers at all, the mini model never
    wrote a right box, 0 of 200, so it could not beat the starting point; a variant that taught box corners
    here made grounding nearly free for every model and the start a good region describer, which left the
    contribution matrix without signal.)
    """
    if style not in ALIGNMENT_STYLES:
        raise ValueError(f"unknown alignment caption style {style!r}; use one of {', '.join(ALIGNMENT_STYLES)}")
    return f"{scene_prefix(scene)}: {_shape_list(scene, style, rng)}"


def scene_prefix(scene) -> str:
    """`white background` / `noisy gray background`: how every alignment caption begins."""
    return f"{'noisy ' if scene.noisy else ''}{scene.background} background"


def _shape_list(scene, style: str, rng: random.Random | None) -> str:
    shapes = list(scene.shapes)
    if style == "reading":
        return "; ".join(f"{s.size} {s.color} {s.kind}, {s.position}" for s in shapes)
    if rng is not None:
        rng.shuffle(shapes)
    if style == "position":
        return "; ".join(f"{s.position}: {s.size} {s.color} {s.kind}" for s in shapes)
    if style == "center":
        return "; ".join(f"{s.size} {s.color} {s.kind} at {(s.col + 0.5) / GRID:.2f} {(s.row + 0.5) / GRID:.2f}"
                         for s in shapes)  # fmt: skip
    return "; ".join(f"{s.color}: {s.size} {s.kind}, {s.position}" for s in shapes)


def pretrain_scenes(num_images: int, seed: int) -> list:
    """The pretraining scenes of `seed` (a random stream of its own, so never the benchmark's images)."""
    rng = random.Random(f"toy-pretrain-{seed}")
    return [random_scene(rng) for _ in range(num_images)]


def write_pretrain_data(folder: str | os.PathLike, num_images: int, image_size: int, seed: int) -> Path:
    """Render `num_images` pretraining scenes (never benchmark images) and their LLaVA-pretrain records."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    scenes = pretrain_scenes(num_images, seed)
    caption_rng = random.Random(f"toy-pretrain-captions-{seed}")
    for index in tqdm(range(num_images), desc="pretraining images", unit="img", file=sys.stderr):
        scene = scenes[index]
        relative = f"images/{index:06d}.png"
        render_scene(scene, image_size, noise_seed=(seed, 1_000_000 + index)).save(folder / relative, format="PNG")
        records.append({
            "id": f"{PRETRAIN_TASK}-{index:06d}",
            "image": relative,
            "task": PRETRAIN_TASK,
            "conversations": [
                {"from": "human", "value": "<image>"},
                {"from": "gpt", "value": alignment_caption(scene, caption_rng.choice(ALIGNMENT_STYLES), caption_rng)},
            ],
        })  # fmt: skip
    data_file = folder / f"{PRETRAIN_TASK}_pretrain-{num_images}.json"
    atomic_write_json(data_file, records, indent=None)
    return data_file


# Per-patch labels of the tower pretraining, one head each; index 0 of the shape heads means "empty cell".
TOWER_HEADS: dict[str, int] = {
    "color": 1 + len(COLORS),
    "kind": 1 + len(SHAPES),
    "size": 1 + len(SIZES),
    "cell": GRID * GRID,
    "background": len(BACKGROUNDS),
    "noisy": 2,
}


def patch_labels(scene, patches_per_side: int = PATCHES_PER_SIDE) -> dict[str, list[int]]:
    """Each patch's labels in row-major patch order: what its grid cell holds, which cell, the background."""
    per_cell = patches_per_side // GRID
    occupant = {(s.row, s.col): s for s in scene.shapes}
    labels: dict[str, list[int]] = {name: [] for name in TOWER_HEADS}
    for pr in range(patches_per_side):
        for pc in range(patches_per_side):
            row, col = pr // per_cell, pc // per_cell
            shape = occupant.get((row, col))
            labels["color"].append(0 if shape is None else 1 + sorted(COLORS).index(shape.color))
            labels["kind"].append(0 if shape is None else 1 + SHAPES.index(shape.kind))
            labels["size"].append(0 if shape is None else 1 + sorted(SIZES).index(shape.size))
            labels["cell"].append(row * GRID + col)
            labels["background"].append(sorted(BACKGROUNDS).index(scene.background))
            labels["noisy"].append(int(scene.noisy))
    return labels


def pretrain_vision_tower(
    tower_dir: Path, image_folder: Path, num_images: int, seed: int, steps: int, select_layer: int = -2
) -> dict[str, float]:
    """Train the saved tower in place on per-patch attribute labels of the pretraining images.

    Reads `image_folder/images/{index:06d}.png` (written by `write_pretrain_data`) through the tower's own
    image processor, trains the tower with one linear head per label on hidden layer `select_layer`, saves
    the tower (without the heads) back to `tower_dir` and returns the final accuracies per head.
    """
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from llava.mm_utils import cache_transformers_vision_check
    from llava.model.multimodal_encoder.clip_encoder import selected_hidden_state

    cache_transformers_vision_check()  # 3000 images: about 17 s of Pillow metadata reads otherwise
    processor = CLIPImageProcessor.from_pretrained(str(tower_dir))
    tower = CLIPVisionModel.from_pretrained(str(tower_dir))
    config = tower.config
    side = config.image_size // config.patch_size
    scenes = pretrain_scenes(num_images, seed)
    pixels = torch.cat([
        processor([Image.open(image_folder / f"images/{index:06d}.png").convert("RGB") for index in batch],
                  return_tensors="pt")["pixel_values"]
        for batch in (range(i, min(i + 256, num_images)) for i in range(0, num_images, 256))
    ])  # fmt: skip
    per_scene = [patch_labels(scene, side) for scene in scenes]
    labels = {name: torch.tensor([scene_labels[name] for scene_labels in per_scene]) for name in TOWER_HEADS}

    torch.manual_seed(seed)
    heads = torch.nn.ModuleDict({name: torch.nn.Linear(config.hidden_size, n) for name, n in TOWER_HEADS.items()})
    optimizer = torch.optim.AdamW([*tower.parameters(), *heads.parameters()], lr=TOWER_LR, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    tower.train()
    accuracy: dict[str, float] = {}
    bar = tqdm(range(steps), desc="vision tower pretraining", unit="step", file=sys.stderr)
    for step in bar:
        index = torch.randint(num_images, (TOWER_BATCH,), generator=generator)
        features = selected_hidden_state(tower, pixels[index], select_layer)[:, 1:]  # the layers after it: unused
        loss = torch.zeros(())
        for name, head in heads.items():
            logits = head(features)
            target = labels[name][index]
            loss = loss + torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
            accuracy[name] = (logits.argmax(-1) == target).float().mean().item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*tower.parameters(), *heads.parameters()], 1.0)
        optimizer.step()
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", kind=f"{accuracy['kind']:.2f}", refresh=False)
    tower.eval()
    tower.save_pretrained(str(tower_dir))
    return accuracy


def pretrain_command(
    random_base: Path, tower: Path, data_file: Path, run_dir: Path, steps: int, batch_size: int, lr: float, seed: int
) -> list[str]:
    """The `llava.train.train` command of the alignment pretraining (full model, plain template, CPU-friendly)."""
    return [
        sys.executable, "-m", "llava.train.train",
        "--model_name_or_path", str(random_base),
        "--version", "plain",
        "--data_path", str(data_file),
        "--image_folder", str(data_file.parent),
        "--vision_tower", str(tower),
        "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2",
        "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False",
        "--image_aspect_ratio", "pad",
        "--output_dir", str(run_dir),
        "--overwrite_output_dir", "True",
        "--max_steps", str(steps),
        "--per_device_train_batch_size", str(batch_size),
        "--learning_rate", str(lr),
        "--weight_decay", "0.",
        "--warmup_ratio", "0.03",
        "--lr_scheduler_type", "constant_with_warmup",
        "--logging_steps", str(PRETRAIN_LOGGING_STEPS),
        "--save_strategy", "no",
        "--model_max_length", str(TOY_SIZES["model_max_length"]),
        "--gradient_checkpointing", "False",
        "--lazy_preprocess", "True",
        "--dataloader_num_workers", "0",
        "--report_to", "none",
        "--seed", str(seed),
        "--disable_tqdm", "True",
    ]  # fmt: skip


_LOSS_LINE = re.compile(r"^\{'loss': ([0-9.eE+-]+)")


def run_with_progress(command: list[str], log_file: Path, steps: int, logging_steps: int, desc: str) -> int:
    """Run a training command with its output in `log_file` and a progress bar on screen; returns the exit code.

    The bar advances by `logging_steps` at every loss line the Trainer logs and shows the latest loss.
    """
    with open(log_file, "w", encoding="utf-8") as log, tqdm(
        total=steps, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True
    ) as bar:
        log.write(" ".join(command) + "\n")
        log.flush()
        # Unbuffered, so each loss line reaches the bar when it is logged rather than in 8 KB chunks.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                   env=env)  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            match = _LOSS_LINE.match(line)
            if match:
                bar.update(min(logging_steps, steps - bar.n))
                bar.set_postfix(loss=f"{float(match.group(1)):.3f}", refresh=False)
        returncode = process.wait()
        if returncode == 0:
            bar.update(steps - bar.n)
    return returncode


def split_checkpoint(run_dir: Path, random_base: Path, out: Path) -> dict[str, str]:
    """Split the pretrained LLaVA checkpoint into base LM, projector file and a start checkpoint folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llava.model.language_model.llava_llama import LlavaConfig

    state = _load_state(run_dir)
    projector = {k: v for k, v in state.items() if ".mm_projector." in k}
    language = {k: v for k, v in state.items() if ".mm_projector." not in k and ".vision_tower." not in k}
    if not projector:
        raise ValueError(f"{run_dir}: the pretrained checkpoint holds no mm_projector weights")

    base_dir, projector_dir, start_dir = out / "base", out / "projector", out / START_NAME
    for folder in (base_dir, projector_dir, start_dir):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    lm = LlamaForCausalLM(LlamaConfig.from_pretrained(str(random_base)))
    lm.load_state_dict(language, strict=True)
    lm.save_pretrained(str(base_dir))
    AutoTokenizer.from_pretrained(str(random_base), use_fast=False).save_pretrained(str(base_dir))

    torch.save(projector, projector_dir / "mm_projector.bin")
    LlavaConfig.from_pretrained(str(run_dir)).save_pretrained(str(start_dir))
    shutil.copyfile(projector_dir / "mm_projector.bin", start_dir / "mm_projector.bin")
    return {"base": str(base_dir), "projector": str(projector_dir / "mm_projector.bin"), "start": str(start_dir)}


def _load_state(run_dir: Path) -> dict[str, torch.Tensor]:
    safetensors_file, bin_file = run_dir / "model.safetensors", run_dir / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors_file))
    if bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{run_dir}: no model.safetensors or pytorch_model.bin; did the pretraining finish?")


def _settings(manifest: dict[str, Any], pretrain: dict[str, Any], seed: int) -> dict[str, Any]:
    # The benchmark's format too: its text trains the tokenizer, so a build from an older format is not reused.
    return {
        "benchmark_format": manifest["format_version"],
        "benchmark_seed": manifest["seed"],
        "benchmark_scale": manifest["scale"],
        "image_size": manifest["image_size"],
        "seed": seed,
        "pretrain": pretrain,
        "format_version": FORMAT_VERSION,
    }


def load_toy_model(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a finished toy model build; errors name the file."""
    path = Path(output_dir) / MANIFEST_NAME
    manifest = load_json(path)
    for key in ("base", "vision_tower", "projector", "start", "settings", "config"):
        if key not in manifest:
            raise ValueError(f"{path}: missing field {key!r}")
    return manifest


def build_toy_model(
    benchmark_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    seed: int = 0,
    pretrain_images: int = DEFAULT_PRETRAIN_IMAGES,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    pretrain_batch_size: int = DEFAULT_PRETRAIN_BATCH,
    pretrain_lr: float = DEFAULT_PRETRAIN_LR,
    overwrite: bool = False,
    tower_steps: int = DEFAULT_TOWER_STEPS,
) -> dict[str, Any]:
    """Build (or reuse an identical finished build of) the toy starting checkpoint; returns its manifest."""
    for name, value in (("pretrain_images", pretrain_images), ("pretrain_steps", pretrain_steps),
                        ("pretrain_batch_size", pretrain_batch_size), ("tower_steps", tower_steps)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not pretrain_lr > 0:
        raise ValueError(f"pretrain_lr must be positive, got {pretrain_lr!r}")
    benchmark = load_toy_manifest(benchmark_dir)
    out = Path(output_dir)
    pretrain = {"images": pretrain_images, "steps": pretrain_steps, "batch_size": pretrain_batch_size, "lr": pretrain_lr,
                "tower_steps": tower_steps}  # fmt: skip
    settings = _settings(benchmark, pretrain, seed)
    manifest_path = out / MANIFEST_NAME
    if manifest_path.is_file() and not overwrite:
        existing = load_toy_model(out)
        if existing["settings"] == settings and all(
            Path(existing[k]).exists() for k in ("base", "vision_tower", "projector", "start")
        ):
            return existing
    manifest_path.unlink(missing_ok=True)

    from llava.model.tiny import build_base_lm, build_vision_tower

    cfg = toy_tiny_config(benchmark["image_size"], seed)
    random_base, tower, pretrain_dir = out / "random_base", out / "vision_tower", out / "pretrain"
    data_file = write_pretrain_data(pretrain_dir, pretrain_images, benchmark["image_size"], seed)
    texts = toy_corpus(benchmark_dir) + toy_corpus(load_json(data_file))
    build_base_lm(random_base, cfg, texts)
    build_vision_tower(tower, cfg)
    print(f"[toy model] vision tower pretraining: {tower_steps} steps of per-patch attribute prediction", flush=True)
    start = time.monotonic()
    accuracy = pretrain_vision_tower(tower, pretrain_dir, pretrain_images, seed, tower_steps, cfg.mm_vision_select_layer)
    print(f"[toy model] vision tower done in {time.monotonic() - start:.1f} s; last-batch accuracy "
          + ", ".join(f"{name} {value:.2f}" for name, value in accuracy.items()), flush=True)  # fmt: skip

    run_dir, log_file = pretrain_dir / "run", pretrain_dir / "pretrain.log"
    command = pretrain_command(random_base, tower, data_file, run_dir, pretrain_steps, pretrain_batch_size,
                               pretrain_lr, seed)  # fmt: skip
    print(f"[toy model] alignment pretraining: {pretrain_steps} steps (log: {log_file})", flush=True)
    start = time.monotonic()
    returncode = run_with_progress(command, log_file, pretrain_steps, PRETRAIN_LOGGING_STEPS,
                                   "alignment pretraining")  # fmt: skip
    if returncode != 0:
        raise RuntimeError(f"the toy model's alignment pretraining failed (exit {returncode}); see {log_file}")
    print(f"[toy model] pretraining done in {time.monotonic() - start:.1f} s", flush=True)

    parts = split_checkpoint(run_dir, random_base, out)
    shutil.rmtree(run_dir)
    manifest = {
        "base": parts["base"],
        "vision_tower": str(tower.resolve()),
        "projector": parts["projector"],
        "start": parts["start"],
        "benchmark": str(Path(benchmark_dir).resolve()),
        "config": asdict(cfg),
        "settings": settings,
        "tower_accuracy": accuracy,
    }
    atomic_write_json(manifest_path, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the toy starting checkpoint (base LM, tower, projector).")
    parser.add_argument("--benchmark", required=True, help="folder of the toy benchmark (toy_benchmark.json)")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-images", type=int, default=DEFAULT_PRETRAIN_IMAGES)
    parser.add_argument("--pretrain-steps", type=int, default=DEFAULT_PRETRAIN_STEPS)
    parser.add_argument("--pretrain-batch-size", type=int, default=DEFAULT_PRETRAIN_BATCH)
    parser.add_argument("--pretrain-lr", type=float, default=DEFAULT_PRETRAIN_LR)
    parser.add_argument("--tower-steps", type=int, default=DEFAULT_TOWER_STEPS,
                        help="steps of the vision tower's attribute pretraining")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if an identical build exists")
    args = parser.parse_args(argv)
    try:
        manifest = build_toy_model(
            args.benchmark, args.output_dir, args.seed, args.pretrain_images, args.pretrain_steps,
            args.pretrain_batch_size, args.pretrain_lr, args.overwrite, args.tower_steps,
        )  # fmt: skip
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for key in ("base", "vision_tower", "projector", "start"):
        print(f"{key:<13}{manifest[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
