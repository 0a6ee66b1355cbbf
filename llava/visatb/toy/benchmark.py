"""The embedded toy benchmark: coloured shapes on a 3x3 grid, asked about in the Academic benchmark's task types.

(Over 600 lines on purpose: drawing, the five tasks' records and the manifest are one format, FORMAT_VERSION.)

Images hold one or two shapes (circle, square, triangle; red, green, blue, yellow; small or large), each
centred in a grid cell, on a plain or lightly noisy grey-level background. Five tasks, in the `toy` preset's
task-id order:

    ToyCaption      detailed templated description of the image          caption (CIDEr)
    ToyCaptionList  short description of a region given by its box      caption list (CIDEr vs references)
                    (one-shape images; the cell in compass words, "north west" to
                    "south east", that no other task uses)
    ToyCellQA       grid cell (1-9, reading order) of the shape of a colour qa (exact match)
    ToyBBox         box of the shape a phrase names, "[x1, y1, x2, y2]"   grounding (IoU > 0.5)
                    (every 2nd record: "the whole image", [0.00, 0.00, 1.00, 1.00])
    ToyText         arithmetic and word reversal, no image                trained, not scored

Everything follows from the seed. Train and validation images are disjoint files; tasks share images
within a split, as the Academic tasks share COCO images. The QA task asks for something the starting
point's captions never say (a cell number), so the tiny model learns it from task data only, and learns
it gradually: part-way from a mini share, fully from the whole task. Every scored task is one whose own
data adds more than the seed-to-seed spread moves its score; docs/toy-benchmark-history.md gives the
versions tried and why each task has its present form.

    python -m llava.visatb.toy.benchmark --output-dir data/toy --seed 0 [--scale 0.1] [--overwrite]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.utils import atomic_write_json, load_json
from llava.visatb.subsets import human_size
from llava.visatb.tasks import CAPTION_LIST, TOY

MANIFEST_NAME = "toy_benchmark.json"
IMAGE_DIR = "images"
FORMAT_VERSION = 11

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 50),
    "green": (40, 160, 70),
    "blue": (50, 90, 220),
    "yellow": (230, 200, 40),
}
# Grey levels only, and noise added equally to all channels: a background pixel can never equal a shape colour.
BACKGROUNDS: dict[str, int] = {"white": 245, "gray": 140, "black": 25}
NOISE_AMPLITUDE = 20
SHAPES = ("circle", "square", "triangle")
# Half the shape's extent as a fraction of a grid cell. Small and large boxes of one cell have IoU ~0.3,
# so a grounding answer counts only with the right cell and the right size.
SIZES: dict[str, float] = {"small": 0.24, "large": 0.42}
GRID = 3
POSITIONS = (
    ("top left", "top center", "top right"),
    ("center left", "center", "center right"),
    ("bottom left", "bottom center", "bottom right"),
)
# The cells as region descriptions name them, in words no other task uses: with the grid words above, which
# captions and boxes teach too, the mini model would read part of a region's cell from other tasks' data, a
# seed-dependent share that moves its score about as much as the task's own data adds. With words of their
# own, only region-description data teaches which cell a box is in.
REGION_POSITIONS = (
    ("north west", "north", "north east"),
    ("west", "middle", "east"),
    ("south west", "south", "south east"),
)

# LLaVA-1.5's RefCOCO prompts (region description and referring-expression grounding).
REGION_DESCRIPTION_PROMPT = "Please provide a short description for this region: "
GROUNDING_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: "
DETAIL_PROMPTS = (
    "Describe this image in detail.",
    "Give a detailed description of the image.",
    "What is in this image? Describe it in detail.",
)

# Records per task at scale 1.0. Sizes differ on purpose, as in the Academic mix. Grounding gets the largest
# share: the tiny model needs a few hundred boxes before it places a lone shape, which its whole task teaches
# it; no model here learns to pick the named one of two shapes (the own model's two-shape score is what a
# random pick of the two gives). Region descriptions get 2000 so that the mini model's share is large enough
# for its CIDEr to move between seeds by less than the task's own-data gain.
TRAIN_SIZES: dict[str, int] = {
    "ToyCaption": 1200,
    "ToyCaptionList": 2000,
    "ToyCellQA": 1600,
    "ToyBBox": 4000,
    "ToyText": 800,
}
# The caption sets are the largest: a CIDEr over few images moves more with the images drawn than an accuracy.
VAL_SIZES: dict[str, int] = {
    "ToyCaption": 150,
    "ToyCaptionList": 250,
    "ToyCellQA": 200,
    "ToyBBox": 200,
}
MIN_RECORDS = 4
MIN_IMAGE_SIZE = 24
MAX_IMAGE_SIZE = 1024


# ---------------------------------------------------------------------------- scenes and images


@dataclass(frozen=True)
class ToyShape:
    """One shape: its kind, colour and size names and its grid cell."""

    kind: str
    color: str
    size: str
    row: int
    col: int

    @property
    def position(self) -> str:
        return POSITIONS[self.row][self.col]

    @property
    def region_position(self) -> str:
        return REGION_POSITIONS[self.row][self.col]


@dataclass(frozen=True)
class ToyScene:
    """A background and one or two shapes in reading order (distinct cells, colours and kinds)."""

    background: str
    noisy: bool
    shapes: tuple[ToyShape, ...]


def random_scene(rng: random.Random) -> ToyScene:
    """Draw a scene; two shapes always differ in cell, colour and kind, so 'the red object' is unambiguous."""
    num_shapes = rng.choice((1, 2))
    cells = rng.sample(range(GRID * GRID), num_shapes)
    colors = rng.sample(sorted(COLORS), num_shapes)
    kinds = rng.sample(SHAPES, num_shapes)
    shapes = [
        ToyShape(kind=kind, color=color, size=rng.choice(sorted(SIZES)), row=cell // GRID, col=cell % GRID)
        for cell, color, kind in zip(cells, colors, kinds)
    ]
    shapes.sort(key=lambda s: (s.row, s.col))
    return ToyScene(background=rng.choice(sorted(BACKGROUNDS)), noisy=rng.random() < 0.5, shapes=tuple(shapes))


def shape_pixel_box(shape: ToyShape, image_size: int) -> tuple[int, int, int, int]:
    """The shape's pixel box (x0, y0, x1, y1), end-exclusive; the shape touches all four sides."""
    cell = image_size / GRID
    half = SIZES[shape.size] * cell
    cx, cy = (shape.col + 0.5) * cell, (shape.row + 0.5) * cell
    return round(cx - half), round(cy - half), round(cx + half), round(cy + half)


def normalized_box(shape: ToyShape, image_size: int) -> tuple[float, float, float, float]:
    """The shape's box as fractions of the image side, rounded to 2 decimals (RefCOCO-bbox's precision)."""
    return tuple(round(v / image_size, 2) for v in shape_pixel_box(shape, image_size))


def format_box(box: Sequence[float]) -> str:
    """Write a box as `[0.12, 0.34, 0.56, 0.78]`: two decimals per coordinate, the RefCOCO-bbox answer format."""
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


def render_scene(scene: ToyScene, image_size: int, noise_seed: Sequence[int]) -> Image.Image:
    """Draw the scene as an RGB image; shapes are solid (no antialiasing), so their pixels have the exact colour."""
    level = BACKGROUNDS[scene.background]
    pixels = np.full((image_size, image_size, 1), level, dtype=np.int16)
    if scene.noisy:
        noise_rng = np.random.default_rng(list(noise_seed))
        pixels = pixels + noise_rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, size=pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8).repeat(3, axis=2), "RGB")
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape_pixel_box(shape, image_size)
        # Pillow's coordinates are inclusive.
        right, bottom = x1 - 1, y1 - 1
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((x0, y0, right, bottom), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x0, y0, right, bottom), fill=fill)
        else:
            draw.polygon([(x0, bottom), ((x0 + right) / 2, y0), (right, bottom)], fill=fill)
    return image


# ---------------------------------------------------------------------------- task text

# A builder turns (scene, rng, image size) into (question, references); one reference except for caption lists.
# A training record's answer is the first reference; a caption-list validation record keeps them all.
SceneTaskBuilder = Callable[[ToyScene, random.Random, int], tuple[str, list[str]]]


def _describe(shape: ToyShape) -> str:
    return f"{shape.size} {shape.color} {shape.kind} in the {shape.position}"


def detailed_caption(scene: ToyScene) -> str:
    """The ToyCaption reference: every shape with size, colour, kind and position, then the background."""
    if len(scene.shapes) == 1:
        objects = f"The image shows one {_describe(scene.shapes[0])}."
    else:
        first, second = (_describe(s) for s in scene.shapes)
        objects = f"The image shows two shapes. There is a {first} and a {second}."
    if scene.noisy:
        return f"{objects} The background is {scene.background} with light noise."
    return f"{objects} The background is plain {scene.background}."


def region_descriptions(shape: ToyShape) -> list[str]:
    """The ToyCaptionList references of one shape: five phrasings, as RefCOCO has several per region.

    Every one names the shape's cell (in REGION_POSITIONS' words), so a description has to place the shape: a
    bare "red square" (what the mini model and the starting point write) no longer matches most of a
    reference. (With references that mostly left the cell out, the mini model's bare phrase scored as high as
    the task's own full-data model: on one seed, higher.) The first, the fullest, is the training answer:
    with a phrasing drawn at random per record, which of the five the mini model wrote (or a bare
    "the triangle" on one run) moved its score from run to run.
    """
    where = shape.region_position
    return [
        f"{shape.size} {shape.color} {shape.kind} in the {where}",
        f"{shape.color} {shape.kind} in the {where}",
        f"the {shape.size} {shape.kind} in the {where}",
        f"the {shape.color} one in the {where}",
        f"the {shape.kind} in the {where}",
    ]


def _caption_task(scene: ToyScene, rng: random.Random, image_size: int) -> tuple[str, list[str]]:
    return rng.choice(DETAIL_PROMPTS), [detailed_caption(scene)]


def _caption_list_task(scene: ToyScene, rng: random.Random, image_size: int) -> tuple[str, list[str]]:
    shape = rng.choice(scene.shapes)
    return REGION_DESCRIPTION_PROMPT + format_box(normalized_box(shape, image_size)), region_descriptions(shape)


def cell_number(shape: ToyShape) -> int:
    """The shape's grid cell as a number, 1 (top left) to 9 (bottom right), in reading order."""
    return shape.row * GRID + shape.col + 1


def _cell_qa_task(scene: ToyScene, rng: random.Random, image_size: int) -> tuple[str, list[str]]:
    shape = rng.choice(scene.shapes)
    question = rng.choice(("In which grid cell is the {} shape?", "Which grid cell holds the {} shape?"))
    return (f"{question.format(shape.color)} Answer with a number from 1 to 9, counting cells in reading order.",
            [str(cell_number(shape))])  # fmt: skip


def _bbox_task(scene: ToyScene, rng: random.Random, image_size: int) -> tuple[str, list[str]]:
    shape = rng.choice(scene.shapes)
    return f"{GROUNDING_PROMPT}{shape.color} {shape.kind}.", [format_box(normalized_box(shape, image_size))]


def _whole_image_task(scene: ToyScene, rng: random.Random, image_size: int) -> tuple[str, list[str]]:
    return f"{GROUNDING_PROMPT}{WHOLE_IMAGE_PHRASE}.", [format_box(WHOLE_IMAGE_BOX)]


def text_task(rng: random.Random) -> tuple[str, str]:
    """A ToyText question and answer: one-digit addition or reversing three words of the toy vocabulary."""
    if rng.random() < 0.5:
        a, b = rng.randrange(10), rng.randrange(10)
        return f"What is {a} plus {b}?", str(a + b)
    words = rng.sample(sorted(COLORS) + list(SHAPES) + sorted(SIZES), 3)
    return f"Reverse the order of these words: {' '.join(words)}", " ".join(reversed(words))


SCENE_TASKS: dict[str, SceneTaskBuilder] = {
    "ToyCaption": _caption_task,
    "ToyCaptionList": _caption_list_task,
    "ToyCellQA": _cell_qa_task,
    "ToyBBox": _bbox_task,
}
TEXT_TASKS = ("ToyText",)
# Every WHOLE_IMAGE_EVERY-th ToyBBox record (train and validation) asks for the whole image, whose box is
# [0.00, 0.00, 1.00, 1.00] on every image. A model that cannot yet place a shape still learns that box and
# scores that share (1/2) rather than a seed-dependent few per cent, so every trained model beats the start
# (the first learning check) on every seed. Every 2nd record, not fewer: a mini model with a sparser share of
# them did not reliably learn even that box.
WHOLE_IMAGE_EVERY: dict[str, int] = {"ToyBBox": 2}
WHOLE_IMAGE_PHRASE = "the whole image"
WHOLE_IMAGE_BOX = (0.0, 0.0, 1.0, 1.0)
# Tasks asked only about images with one of these numbers of shapes (every other task: one or two).
# Region descriptions are of one-shape images: the mini model names the one shape right and the cell at
# about chance, the own model learns the cell too, so the task's own-data gain is the cell. On two-shape
# images which shape the mini model named moved its score with the seed and the CPU's kernels more than the
# cell did. The compass words (REGION_POSITIONS) are this task's alone, so no other task teaches them.
SHAPE_COUNTS: dict[str, tuple[int, ...]] = {"ToyCaptionList": (1,)}


def asks_about(task: str, scene: ToyScene) -> bool:
    """Whether `task` may ask about `scene` (SHAPE_COUNTS)."""
    return len(scene.shapes) in SHAPE_COUNTS.get(task, (1, 2))


if set(SCENE_TASKS) | set(TEXT_TASKS) != set(TOY.tasks):
    raise RuntimeError("the toy task builders and the TOY preset in llava/visatb/tasks.py name different tasks")


# ---------------------------------------------------------------------------- records and files


def _record(record_id: str, task: str, question: str, answer: str | list[str], image: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {"id": record_id}
    if image is not None:
        record["image"] = image
        question = f"{DEFAULT_IMAGE_TOKEN}\n{question}"
    record["task"] = task
    record["conversations"] = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return record


def toy_task_sizes(scale: float = 1.0) -> tuple[dict[str, int], dict[str, int]]:
    """(train, validation) record counts per task at `scale`; never fewer than MIN_RECORDS."""
    _check_scale(scale)

    def scaled(n: int) -> int:
        return max(MIN_RECORDS, int(math.floor(n * scale + 0.5)))

    return {t: scaled(n) for t, n in TRAIN_SIZES.items()}, {t: scaled(n) for t, n in VAL_SIZES.items()}


def train_file_name(count: int) -> str:
    """`toy_train-{size}.json`, the size written as the release's file names write it (480, 10k)."""
    return f"toy_train-{human_size(count)}.json"


def val_file_name(task: str, count: int) -> str:
    return f"{task}_val-{human_size(count)}.json"


def image_path(index: int) -> str:
    """Relative path of image `index`, as records write it."""
    return f"{IMAGE_DIR}/{index:06d}.png"


_OWN_IMAGE = re.compile(r"\d{6,}\.png")


def _check_scale(scale: float) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")


def _check_arguments(seed: int, scale: float, image_size: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _check_scale(scale)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not (
        MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE
    ):
        raise ValueError(f"image_size must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, got {image_size!r}")


def load_toy_manifest(output_dir: str | os.PathLike) -> dict[str, Any]:
    """Load `<output_dir>/toy_benchmark.json` and check its fields; errors name the file and field."""
    path = Path(output_dir) / MANIFEST_NAME
    manifest = load_json(path)
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    expected = {
        "seed": int, "scale": (int, float), "image_size": int, "tasks": list, "metrics": dict, "unscored": list,
        "train_file": str, "train_count": int, "train_counts": dict, "val_files": dict, "val_counts": dict,
        "image_dir": str, "num_images": dict, "format_version": int,
    }  # fmt: skip
    for key, kind in expected.items():
        if key not in manifest:
            raise ValueError(f"{path}: missing field {key!r}")
        if not isinstance(manifest[key], kind):
            raise ValueError(f"{path}: field {key!r} has type {type(manifest[key]).__name__}")
    scored = [t for t in manifest["tasks"] if t not in manifest["unscored"]]
    for field_name, keys in (("metrics", scored), ("val_files", scored), ("train_counts", manifest["tasks"])):
        missing = [t for t in keys if t not in manifest[field_name]]
        if missing:
            raise ValueError(f"{path}: field {field_name!r} has no entry for task {missing[0]!r}")
    return manifest


def _manifest_files(manifest: dict[str, Any]) -> list[str]:
    return [manifest["train_file"], *manifest["val_files"].values()]


def _is_complete(output_dir: Path, manifest: dict[str, Any]) -> bool:
    if not all((output_dir / name).is_file() for name in _manifest_files(manifest)):
        return False
    # Images are written before the manifest; every image a record names must be there.
    for name in _manifest_files(manifest):
        records = load_json(output_dir / name)
        if not isinstance(records, list) or not all(
            (output_dir / r["image"]).is_file() for r in records if isinstance(r, dict) and "image" in r
        ):
            return False
    return True


def _remove_previous_outputs(output_dir: Path) -> None:
    """Delete what an earlier generation here wrote (manifest first, then files matching our names only)."""
    (output_dir / MANIFEST_NAME).unlink(missing_ok=True)
    stale = list(output_dir.glob("toy_train-*.json"))
    for task in TOY.scored_tasks:
        stale += output_dir.glob(f"{task}_val-*.json")
    image_dir = output_dir / IMAGE_DIR
    if image_dir.is_dir():
        stale += [p for p in image_dir.iterdir() if _OWN_IMAGE.fullmatch(p.name)]
    for path in stale:
        path.unlink()


def scene_pool(rng: random.Random, counts: dict[str, int]) -> list[ToyScene]:
    """Scenes drawn until every task of `counts` has as many eligible (distinct) images as it has records."""
    scenes: list[ToyScene] = []
    missing = {task: n for task, n in counts.items() if task in SCENE_TASKS}
    while any(n > 0 for n in missing.values()):
        scene = random_scene(rng)
        scenes.append(scene)
        for task in missing:
            missing[task] -= asks_about(task, scene)
    return scenes


def _scene_records(
    task: str, split: str, scenes: list[ToyScene], first_index: int, count: int, rng: random.Random, image_size: int
) -> list[dict[str, Any]]:
    build = SCENE_TASKS[task]
    # Distinct images within a task; the pool holds enough scenes (of enough shapes) for the largest task.
    eligible = [i for i, scene in enumerate(scenes) if asks_about(task, scene)]
    picks = rng.sample(eligible, count)
    records = []
    every = WHOLE_IMAGE_EVERY.get(task)
    for n, pick in enumerate(picks):
        whole = every is not None and n % every == every - 1
        question, references = (_whole_image_task if whole else build)(scenes[pick], rng, image_size)
        answer = references if split == "val" and TOY.metrics[task] == CAPTION_LIST else references[0]
        records.append(_record(f"{task}-{split}-{n:06d}", task, question, answer, image_path(first_index + pick)))
    return records


def _text_records(task: str, count: int, rng: random.Random) -> list[dict[str, Any]]:
    return [_record(f"{task}-train-{n:06d}", task, *text_task(rng), image=None) for n in range(count)]


def _generate(
    output_dir: str | os.PathLike, seed: int, scale: float, image_size: int, overwrite: bool, progress: bool
) -> tuple[dict[str, Any], bool]:
    """Generate (or reuse) the benchmark; returns (manifest, whether files were written)."""
    _check_arguments(seed, scale, image_size)
    out = Path(output_dir)
    if (out / MANIFEST_NAME).is_file() and not overwrite:
        existing = load_toy_manifest(out)
        same = (
            existing["seed"] == seed
            and float(existing["scale"]) == float(scale)
            and existing["image_size"] == image_size
            and existing["format_version"] == FORMAT_VERSION
        )
        if not same:
            raise ValueError(
                f"{out / MANIFEST_NAME}: holds a toy benchmark with seed {existing['seed']}, scale "
                f"{existing['scale']}, image size {existing['image_size']}; pass --overwrite to replace it "
                "or choose another output directory"
            )
        if _is_complete(out, existing):
            return existing, False

    train_counts, val_counts = toy_task_sizes(scale)
    scene_train = {t: n for t, n in train_counts.items() if t in SCENE_TASKS}
    scene_rng = random.Random(f"toy-{seed}-scenes")
    train_scenes = scene_pool(scene_rng, scene_train)
    val_scenes = scene_pool(scene_rng, val_counts)

    train_records: list[dict[str, Any]] = []
    val_records: dict[str, list[dict[str, Any]]] = {}
    for task in TOY.tasks:
        task_rng = random.Random(f"toy-{seed}-{task}-train")
        if task in SCENE_TASKS:
            train_records += _scene_records(task, "train", train_scenes, 0, train_counts[task], task_rng, image_size)
        else:
            train_records += _text_records(task, train_counts[task], task_rng)
    for task in TOY.scored_tasks:
        task_rng = random.Random(f"toy-{seed}-{task}-val")
        val_records[task] = _scene_records(task, "val", val_scenes, len(train_scenes), val_counts[task], task_rng,
                                           image_size)  # fmt: skip

    # Only the scenes some record uses become images (the pool may hold spare one-shape scenes).
    used = sorted({int(r["image"][len(IMAGE_DIR) + 1:-4]) for r in [*train_records, *sum(val_records.values(), [])]
                   if "image" in r})  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_outputs(out)
    (out / IMAGE_DIR).mkdir(exist_ok=True)
    all_scenes = train_scenes + val_scenes
    for index in tqdm(used, desc="toy images", unit="img", disable=not progress):
        render_scene(all_scenes[index], image_size, noise_seed=(seed, index)).save(out / image_path(index), format="PNG")
    val_files: dict[str, str] = {}
    for task, records in val_records.items():
        val_files[task] = val_file_name(task, len(records))
        atomic_write_json(out / val_files[task], records)
    random.Random(f"toy-{seed}-shuffle").shuffle(train_records)
    train_file = train_file_name(len(train_records))
    atomic_write_json(out / train_file, train_records)

    manifest = {
        "benchmark": "toy",
        "preset": TOY.name,
        "seed": seed,
        "scale": scale,
        "image_size": image_size,
        "tasks": list(TOY.tasks),
        "metrics": dict(TOY.metrics),
        "unscored": list(TOY.unscored),
        "train_file": train_file,
        "train_count": len(train_records),
        "train_counts": train_counts,
        "val_files": val_files,
        "val_counts": val_counts,
        "image_dir": IMAGE_DIR,
        "num_images": {"train": sum(i < len(train_scenes) for i in used),
                       "val": sum(i >= len(train_scenes) for i in used)},  # fmt: skip
        "format_version": FORMAT_VERSION,
    }
    # Written last: a manifest on disk means the benchmark next to it is complete.
    atomic_write_json(out / MANIFEST_NAME, manifest)
    return manifest, True


def generate_toy_benchmark(
    output_dir: str | os.PathLike,
    seed: int = 0,
    scale: float = 1.0,
    image_size: int = 64,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the toy benchmark into `output_dir` and return its manifest; an identical finished one is reused."""
    return _generate(output_dir, seed, scale, image_size, overwrite, progress)[0]


# ---------------------------------------------------------------------------- tokenizer corpus


def _record_texts(records: Sequence[Any], source: str) -> list[str]:
    texts = []
    for index, record in enumerate(records):
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(turns, list):
            raise ValueError(f"{source}: record {index} has no conversations list")
        for turn in turns:
            value = turn.get("value") if isinstance(turn, dict) else None
            for text in value if isinstance(value, list) else [value]:
                if not isinstance(text, str):
                    raise ValueError(f"{source}: record {index}: a conversations value is not a string")
                # `<image>` never reaches the tokenizer: LLaVA splits prompts on it before tokenising.
                text = text.replace(DEFAULT_IMAGE_TOKEN + "\n", "").replace(DEFAULT_IMAGE_TOKEN, "").strip()
                if text:
                    texts.append(text)
    return texts


def toy_corpus(source: str | os.PathLike | Sequence[dict[str, Any]]) -> list[str]:
    """Every prompt and answer (all caption references too) of a benchmark directory or record list, `<image>` removed."""
    if isinstance(source, str | os.PathLike):
        out = Path(source)
        manifest = load_toy_manifest(out)
        texts = []
        for name in _manifest_files(manifest):
            records = load_json(out / name)
            if not isinstance(records, list):
                raise ValueError(f"{out / name}: expected a JSON list of records")
            texts += _record_texts(records, str(out / name))
        return texts
    return _record_texts(source, "records")


# ---------------------------------------------------------------------------- command line


def _summary(manifest: dict[str, Any]) -> str:
    lines = [f"{'task':<16}{'metric':<14}{'train':>7}{'val':>6}"]
    for task in manifest["tasks"]:
        metric = manifest["metrics"].get(task, "unscored")
        val = manifest["val_counts"].get(task, "-")
        lines.append(f"{task:<16}{metric:<14}{manifest['train_counts'][task]:>7}{val:>6}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the embedded toy multi-task visual benchmark.")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default="data/toy", help="where to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (non-negative)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every task's train and val size")
    parser.add_argument("--image-size", "--image_size", dest="image_size", type=int, default=64, help="image side")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if a benchmark is there")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        manifest, written = _generate(
            args.output_dir, args.seed, args.scale, args.image_size, args.overwrite, progress=not args.quiet
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(_summary(manifest))
    manifest_path = Path(args.output_dir) / MANIFEST_NAME
    images = sum(manifest["num_images"].values())
    if written:
        print(
            f"wrote {manifest_path} ({manifest['train_count']} train records, {images} images) "
            f"in {time.monotonic() - start:.1f} s"
        )
    else:
        print(f"reused {manifest_path} (same seed, scale and image size; --overwrite regenerates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
