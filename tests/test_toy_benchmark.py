"""The toy benchmark generator: file layout, LLaVA record format, answers that match the drawn pixels, determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.visatb.tasks import CAPTION, CAPTION_LIST, GROUNDING, QA, get_preset, resolve_tasks
from llava.visatb.toy import benchmark as toy

SCALE = 0.05
IMAGE_SIZE = 64
BOX_TEXT = re.compile(r"^\[(\d\.\d\d), (\d\.\d\d), (\d\.\d\d), (\d\.\d\d)\]$")
# The test's own reading of grid position names.
ROWS = {"top": 0, "center": 1, "bottom": 2}
COLS = {"left": 0, "center": 1, "right": 2}
# ... and of the compass words of region descriptions ("north west", "north", ..., "middle", ..., "south east").
COMPASS_WORDS = {"north", "south", "east", "west", "middle"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("toy")
    manifest = toy.generate_toy_benchmark(out, seed=0, scale=SCALE, image_size=IMAGE_SIZE)
    return out, manifest


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def _train(bench: tuple[Path, dict]) -> list[dict]:
    out, manifest = bench
    return _load(out / manifest["train_file"])


def _val(bench: tuple[Path, dict], task: str) -> list[dict]:
    out, manifest = bench
    return _load(out / manifest["val_files"][task])


def _all_records(bench: tuple[Path, dict]) -> list[dict]:
    records = _train(bench)
    for task in bench[1]["val_files"]:
        records += _val(bench, task)
    return records


def _pixels(out: Path, record: dict) -> np.ndarray:
    return np.asarray(Image.open(out / record["image"]).convert("RGB"))


def _mask(pixels: np.ndarray, color: str) -> np.ndarray:
    return np.all(pixels == np.array(toy.COLORS[color]), axis=-1)


def _mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Normalised, end-exclusive bounding box of the True pixels."""
    ys, xs = np.nonzero(mask)
    side = mask.shape[0]
    return xs.min() / side, ys.min() / side, (xs.max() + 1) / side, (ys.max() + 1) / side


def _parse_box(text: str) -> tuple[float, float, float, float]:
    match = BOX_TEXT.match(text)
    assert match, f"{text!r} is not written as [0.12, 0.34, 0.56, 0.78]"
    return tuple(float(v) for v in match.groups())


def _cell_center(position: str, side: int) -> tuple[int, int]:
    words = position.split()
    row, col = (1, 1) if words == ["center"] else (ROWS[words[0]], COLS[words[1]])
    return int((col + 0.5) * side / 3), int((row + 0.5) * side / 3)


def _region_cell_center(position: str, side: int) -> tuple[int, int]:
    words = position.split()
    assert set(words) <= COMPASS_WORDS and len(words) == len(set(words)) <= 2, position
    assert words == ["middle"] or "middle" not in words, position
    row = 0 if "north" in words else 2 if "south" in words else 1
    col = 0 if "west" in words else 2 if "east" in words else 1
    return int((col + 0.5) * side / 3), int((row + 0.5) * side / 3)


def _shape_of(mask: np.ndarray) -> str:
    """Classify a solid shape by how much of its bounding box it fills (square 1, circle ~pi/4, triangle ~1/2)."""
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    return "square" if fill > 0.95 else "circle" if fill > 0.645 else "triangle"


# ---------------------------------------------------------------------------- layout and manifest


def test_manifest_lists_tasks_metrics_files_and_counts(bench):
    out, manifest = bench
    assert manifest == toy.load_toy_manifest(out)
    assert manifest["tasks"] == ["ToyCaption", "ToyCaptionList", "ToyCellQA", "ToyBBox", "ToyText"]
    assert manifest["metrics"] == {
        "ToyCaption": CAPTION,
        "ToyCaptionList": CAPTION_LIST,
        "ToyCellQA": QA,
        "ToyBBox": GROUNDING,
    }
    assert manifest["unscored"] == ["ToyText"]
    assert (manifest["seed"], manifest["scale"], manifest["image_size"]) == (0, SCALE, IMAGE_SIZE)
    # 0.05 x (1200, 2000, 1600, 4000, 800) and 0.05 x (150, 250, 200, 200), rounded half up, at least 4.
    assert manifest["train_counts"] == {
        "ToyCaption": 60, "ToyCaptionList": 100, "ToyCellQA": 80, "ToyBBox": 200, "ToyText": 40,
    }  # fmt: skip
    assert manifest["val_counts"] == {"ToyCaption": 8, "ToyCaptionList": 13, "ToyCellQA": 10, "ToyBBox": 10}
    assert manifest["train_count"] == 480 and manifest["train_file"] == "toy_train-480.json"
    assert manifest["val_files"]["ToyBBox"] == "ToyBBox_val-10.json"
    # Enough scenes for the largest task of each split (200 train, 13 val).
    num = manifest["num_images"]
    assert num["train"] >= 200 and num["val"] >= 13 and num["train"] + num["val"] == len(list((out / "images").iterdir()))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["images", toy.MANIFEST_NAME, "toy_train-480.json", *manifest["val_files"].values()]
    )


def test_record_counts_per_task_match_manifest_and_differ(bench):
    out, manifest = bench
    train = _train(bench)
    per_task = {t: sum(r["task"] == t for r in train) for t in manifest["tasks"]}
    assert per_task == manifest["train_counts"]
    assert len(set(per_task.values())) == len(per_task), "task sizes must differ, as in the real benchmark"
    for task, count in manifest["val_counts"].items():
        val = _val(bench, task)
        assert len(val) == count and {r["task"] for r in val} == {task}


def test_file_names_follow_the_release_naming():
    assert toy.train_file_name(480) == "toy_train-480.json"
    assert toy.train_file_name(9600) == "toy_train-10k.json"
    assert toy.val_file_name("ToyBBox", 120) == "ToyBBox_val-120.json"


def test_toy_preset_is_registered():
    preset = get_preset("toy")
    assert list(preset.tasks) == resolve_tasks(task_preset="toy")
    assert preset.scored_tasks == ("ToyCaption", "ToyCaptionList", "ToyCellQA", "ToyBBox")


def test_task_sizes_scale_and_have_a_floor():
    train, val = toy.toy_task_sizes(0.5)
    assert train["ToyBBox"] == 2000 and train["ToyCaption"] == 600 and val["ToyCellQA"] == 100 and val["ToyCaption"] == 75
    train, val = toy.toy_task_sizes(0.001)
    assert set(train.values()) == {4} and set(val.values()) == {4}


# ---------------------------------------------------------------------------- record format


def test_every_record_is_llava_format_with_a_known_task(bench):
    records = _all_records(bench)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    for record in records:
        assert record["task"] in get_preset("toy").tasks
        assert set(record) <= {"id", "image", "task", "conversations"}
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert isinstance(human["value"], str) and human["value"].strip()
        has_image = "image" in record
        assert has_image == (record["task"] != "ToyText")
        assert human["value"].startswith(DEFAULT_IMAGE_TOKEN + "\n") == has_image
        assert human["value"].count(DEFAULT_IMAGE_TOKEN) == int(has_image)
        assert DEFAULT_IMAGE_TOKEN not in json.dumps(gpt["value"])


def test_qa_prompts_ask_for_a_short_answer(bench):
    for record in _all_records(bench):
        question, answer = (turn["value"] for turn in record["conversations"])
        if record["task"] == "ToyCellQA":
            assert question.endswith("Answer with a number from 1 to 9, counting cells in reading order.")
            assert re.fullmatch(r"[1-9]", answer)


def test_caption_list_targets_are_reference_lists_in_val_and_strings_in_train(bench):
    for record in _val(bench, "ToyCaptionList"):
        references = record["conversations"][1]["value"]
        assert isinstance(references, list) and len(references) >= 2
        assert len(set(references)) == len(references) and all(isinstance(r, str) and r for r in references)
    for record in _train(bench):
        assert isinstance(record["conversations"][1]["value"], str)


def _assert_region_described(out, record, question, description):
    """`description` ("small red square in the north east") is the shape the question's box frames: its colour,
    kind, box and cell. Returns the cell's words."""
    _, color, kind, position = re.fullmatch(r"(small|large) (\w+) (\w+) in the (.+)", description).groups()
    pixels = _pixels(out, record)
    mask = _mask(pixels, color)
    assert _shape_of(mask) == kind, record["id"]
    assert np.allclose(_parse_box(question.rsplit(": ", 1)[1]), _mask_box(mask), atol=0.005 + 1e-9), record["id"]
    cx, cy = _region_cell_center(position, IMAGE_SIZE)
    assert tuple(pixels[cy, cx]) == toy.COLORS[color], record["id"]
    return position


def test_region_training_answers_are_the_full_first_phrasing(bench):
    # One phrasing to learn (size, colour, kind, cell), the first of the five references a validation record has.
    out, _ = bench
    records = [r for r in _train(bench) if r["task"] == "ToyCaptionList"]
    assert records
    for record in records:
        question, answer = (turn["value"] for turn in record["conversations"])
        _assert_region_described(out, record, question, answer)
    shape = toy.ToyShape(kind="circle", color="red", size="small", row=0, col=2)
    assert toy.region_descriptions(shape)[0] == "small red circle in the north east"


def test_text_task_answers_are_right(bench):
    text_records = [r for r in _train(bench) if r["task"] == "ToyText"]
    assert text_records
    for record in text_records:
        question, answer = (turn["value"] for turn in record["conversations"])
        if match := re.fullmatch(r"What is (\d) plus (\d)\?", question):
            assert answer == str(int(match[1]) + int(match[2]))
        else:
            words = question.removeprefix("Reverse the order of these words: ").split()
            assert len(words) == 3 and answer.split() == words[::-1]


# ---------------------------------------------------------------------------- images and answers


def test_images_exist_with_the_stated_size_and_train_val_are_disjoint(bench):
    out, manifest = bench
    train_images = {r["image"] for r in _train(bench) if "image" in r}
    val_images = {r["image"] for t in manifest["val_files"] for r in _val(bench, t)}
    assert train_images and val_images and not train_images & val_images
    for name in train_images | val_images:
        assert re.fullmatch(r"images/\d{6}\.png", name)
        with Image.open(out / name) as image:
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"
    on_disk = {f"images/{p.name}" for p in (out / "images").iterdir()}
    assert on_disk == train_images | val_images


def test_grounding_boxes_are_where_the_named_shape_was_drawn(bench):
    out, _ = bench
    records = [r for r in _all_records(bench) if r["task"] == "ToyBBox"]
    shape_records = 0
    for record in records:
        question, answer = (turn["value"] for turn in record["conversations"])
        assert question.startswith(
            "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: "
        )
        if question.endswith(": the whole image."):
            assert answer == "[0.00, 0.00, 1.00, 1.00]", record["id"]
            continue
        shape_records += 1
        color, kind = question.rsplit(": ", 1)[1].removesuffix(".").split()
        x1, y1, x2, y2 = box = _parse_box(answer)
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
        pixels = _pixels(out, record)
        mask = _mask(pixels, color)
        assert mask.any(), f"{record['id']}: no {color} pixels"
        # The answer is the drawn extent rounded to 2 decimals.
        assert np.allclose(box, _mask_box(mask), atol=0.005 + 1e-9), record["id"]
        cx, cy = int((x1 + x2) / 2 * IMAGE_SIZE), int((y1 + y2) / 2 * IMAGE_SIZE)
        for dx, dy in ((0, 0), (1, 0), (-1, 0), (0, 1)):
            assert tuple(pixels[cy + dy, cx + dx]) == toy.COLORS[color]
        assert _shape_of(mask) == kind, record["id"]
    assert shape_records >= len(records) // 2


def test_every_second_grounding_record_asks_for_the_whole_image(bench):
    # Records ToyBBox-<split>-000001, -000003, ... (every 2nd in each split), and no other, ask for the whole image.
    for split, records in (("train", [r for r in _train(bench) if r["task"] == "ToyBBox"]),
                           ("val", _val(bench, "ToyBBox"))):  # fmt: skip
        assert len(records) >= 4
        whole = {r["id"] for r in records if r["conversations"][0]["value"].endswith(": the whole image.")}
        expected = {r["id"] for r in records if int(r["id"].rsplit("-", 1)[1]) % 2 == 1}
        assert whole == expected and len(whole) == len(records) // 2, split


def _cell_of(mask: np.ndarray, side: int) -> int:
    ys, xs = np.nonzero(mask)
    row, col = int(ys.mean() * 3 // side), int(xs.mean() * 3 // side)
    return row * 3 + col + 1


def test_qa_answers_match_the_image(bench):
    out, _ = bench
    qa = [r for r in _all_records(bench) if r["task"] == "ToyCellQA"]
    assert qa
    for record in qa:
        question, answer = (turn["value"] for turn in record["conversations"])
        pixels = _pixels(out, record)
        drawn = [c for c in toy.COLORS if _mask(pixels, c).any()]
        color = re.search(r"the (\w+) shape\?", question)[1]
        assert color in drawn and str(_cell_of(_mask(pixels, color), IMAGE_SIZE)) == answer, record["id"]


def test_captions_name_exactly_the_colours_drawn_and_the_background(bench):
    out, _ = bench
    records = [r for r in _all_records(bench) if r["task"] == "ToyCaption"]
    for record in records:
        caption = record["conversations"][1]["value"]
        pixels = _pixels(out, record)
        drawn = {c for c in toy.COLORS if _mask(pixels, c).any()}
        named = {w.strip(".") for w in caption.split() if w.strip(".") in toy.COLORS}
        assert named == drawn, record["id"]
        assert caption.startswith("The image shows one " if len(drawn) == 1 else "The image shows two shapes.")
        top_row = pixels[0]
        assert (len(np.unique(top_row.reshape(-1, 3), axis=0)) == 1) == ("plain" in caption), record["id"]


def test_region_description_box_points_at_the_described_shape(bench):
    out, _ = bench
    for record in _val(bench, "ToyCaptionList"):
        question, references = (turn["value"] for turn in record["conversations"])
        position = _assert_region_described(out, record, question, references[0])
        assert all(ref.endswith(f" in the {position}") for ref in references)


def test_only_region_descriptions_use_compass_words(bench):
    # Their cell words are their own: no caption, question, box phrase or text answer says north or middle.
    seen = set()
    for record in _all_records(bench):
        words = set(re.findall(r"[a-z]+", json.dumps(record["conversations"]).lower()))
        if record["task"] == "ToyCaptionList":
            seen |= words & COMPASS_WORDS
            assert not words & {"top", "bottom", "left", "right", "center"}, record["id"]
        else:
            assert not words & COMPASS_WORDS, record["id"]
    assert seen == COMPASS_WORDS


def test_region_descriptions_are_asked_of_one_shape_images_only(bench):
    # Which shape is never in doubt (the mini model's choice of one of two moved its score with the seed);
    # the cell, in the task's own compass words, is what the region data teaches.
    out, _ = bench
    records = [r for r in _all_records(bench) if r["task"] == "ToyCaptionList"]
    assert records
    for record in records:
        pixels = _pixels(out, record)
        assert sum(_mask(pixels, c).any() for c in toy.COLORS) == 1, record["id"]
    other = [r for r in _all_records(bench) if r["task"] == "ToyCaption"]
    assert any(sum(_mask(_pixels(out, r), c).any() for c in toy.COLORS) == 2 for r in other)


def test_other_image_size_scales_boxes(tmp_path):
    manifest = toy.generate_toy_benchmark(tmp_path, seed=3, scale=0.002, image_size=48)
    record = _load(tmp_path / manifest["val_files"]["ToyBBox"])[0]
    with Image.open(tmp_path / record["image"]) as image:
        assert image.size == (48, 48)
        pixels = np.asarray(image)
    color = record["conversations"][0]["value"].rsplit(": ", 1)[1].split()[0]
    box = _parse_box(record["conversations"][1]["value"])
    assert np.allclose(box, _mask_box(_mask(pixels, color)), atol=0.005 + 1e-9)


# ---------------------------------------------------------------------------- determinism and reuse


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        toy.generate_toy_benchmark(tmp_path / name, seed=seed, scale=0.02)
    first, again, other = (_snapshot(tmp_path / n) for n in "abc")
    assert first == again
    # The same files apart from images, whose numbering follows the seed's scene pool.
    assert {k for k in first if not k.startswith("images/")} == {k for k in other if not k.startswith("images/")}
    assert first["toy_train-192.json"] != other["toy_train-192.json"]
    differing = [k for k in first if k.startswith("images/") and first[k] != other.get(k)]
    assert len(differing) > len([k for k in first if k.startswith("images/")]) // 2


def test_existing_benchmark_is_reused_and_other_settings_need_overwrite(tmp_path):
    toy.generate_toy_benchmark(tmp_path, seed=0, scale=0.01)
    manifest_path = tmp_path / toy.MANIFEST_NAME
    stamp = manifest_path.stat().st_mtime_ns
    assert toy.generate_toy_benchmark(tmp_path, seed=0, scale=0.01)["train_count"] == 96
    assert manifest_path.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"toy_benchmark\.json: holds a toy benchmark with seed 0, scale 0\.01"):
        toy.generate_toy_benchmark(tmp_path, seed=0, scale=0.02)
    manifest = toy.generate_toy_benchmark(tmp_path, seed=0, scale=0.02, overwrite=True)
    assert manifest["train_count"] == 192
    assert not (tmp_path / "toy_train-96.json").exists()
    assert len(list((tmp_path / "images").iterdir())) == sum(manifest["num_images"].values())


def test_missing_files_trigger_regeneration(tmp_path):
    manifest = toy.generate_toy_benchmark(tmp_path, seed=0, scale=0.01)
    (tmp_path / manifest["val_files"]["ToyBBox"]).unlink()
    toy.generate_toy_benchmark(tmp_path, seed=0, scale=0.01)
    assert (tmp_path / manifest["val_files"]["ToyBBox"]).is_file()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"scale": 0.0}, "scale must be a positive finite number"),
        ({"scale": float("nan")}, "scale must be a positive finite number"),
        ({"image_size": 16}, "image_size must be an integer from 24"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        toy.generate_toy_benchmark(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_malformed_manifest_names_the_field(tmp_path):
    (tmp_path / toy.MANIFEST_NAME).write_text(json.dumps({"seed": 0}))
    with pytest.raises(ValueError, match=r"toy_benchmark\.json: missing field 'scale'"):
        toy.load_toy_manifest(tmp_path)


# ---------------------------------------------------------------------------- corpus and CLI


def test_corpus_from_records_lists_every_prompt_and_reference_without_image_token():
    records = [
        {"id": "a", "image": "images/000000.png", "task": "ToyCaptionList",
         "conversations": [{"from": "human", "value": "<image>\nDescribe [0.10, 0.20, 0.30, 0.40]"},
                           {"from": "gpt", "value": ["red circle", "large red circle"]}]},
        {"id": "b", "task": "ToyText",
         "conversations": [{"from": "human", "value": "What is 1 plus 2?"}, {"from": "gpt", "value": "3"}]},
    ]  # fmt: skip
    assert toy.toy_corpus(records) == [
        "Describe [0.10, 0.20, 0.30, 0.40]",
        "red circle",
        "large red circle",
        "What is 1 plus 2?",
        "3",
    ]


def test_corpus_from_directory_covers_train_and_val(bench):
    out, manifest = bench
    corpus = toy.toy_corpus(out)
    records = _all_records(bench)
    assert len(corpus) == sum(1 + len(v) if isinstance(v, list) else 2 for v in
                              (r["conversations"][1]["value"] for r in records))  # fmt: skip
    assert not any(DEFAULT_IMAGE_TOKEN in text for text in corpus)
    assert set(_val(bench, "ToyCaptionList")[0]["conversations"][1]["value"]) <= set(corpus)


def test_cli_writes_prints_a_table_and_reports_errors(tmp_path, capsys):
    assert toy.main(["--output-dir", str(tmp_path), "--seed", "2", "--scale", "0.01", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^ToyCellQA\s+qa\s+16\s+4$", printed, re.M)
    assert f"wrote {tmp_path / toy.MANIFEST_NAME} (96 train records" in printed
    assert toy.main(["--output-dir", str(tmp_path), "--seed", "2", "--scale", "0.01", "--quiet"]) == 0
    assert "reused" in capsys.readouterr().out
    assert toy.main(["--output-dir", str(tmp_path), "--seed", "3", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "--overwrite" in captured.err and "Traceback" not in captured.err
