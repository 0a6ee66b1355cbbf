"""Images are opened and decoded where data is checked, and loaded the same way (and correctly) everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_inference_cli import Loader, generator, make_job, write_questions  # noqa: F401
from train_helpers import TASKS
from transformers import CLIPImageProcessor

from llava.answers.validation_answers import run_inference
from llava.conversation import get_conv_template
from llava.mm_utils import ImageTooLargeError, load_image, process_images, to_rgb
from llava.train.data import LazySupervisedDataset, scan_data
from llava.visatb import check_data


def sixteen_bit_png(path: Path) -> np.ndarray:
    values = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    return values


def test_a_16_bit_png_keeps_its_grey_levels(tmp_path):
    values = sixteen_bit_png(tmp_path / "deep.png")
    rgb = np.asarray(load_image(tmp_path / "deep.png"))
    assert rgb.shape == (16, 16, 3)
    assert np.array_equal(rgb[..., 0], (values // 257).astype(np.uint8))  # 0..255, not flat white
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_a_32_bit_integer_image_is_read_as_16_bit_grey():
    values = np.array([[0, 65535], [32896, 70000]], dtype=np.int32)
    rgb = np.asarray(to_rgb(Image.fromarray(values, mode="I")))
    assert rgb[..., 1].tolist() == [[0, 255], [128, 255]]


def test_transparent_palette_pixels_become_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1  # the green entry is transparent
    image.save(tmp_path / "p.png")
    assert np.asarray(load_image(tmp_path / "p.png")).tolist() == [[[255, 0, 0], [255, 255, 255]]]
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert np.asarray(to_rgb(half)).tolist() == [[[127, 127, 127]]]


def exif_rotated_jpeg(path: Path) -> None:
    """A 40x20 JPEG (left half red) whose EXIF says: rotate 90 degrees clockwise to view it."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)


def test_training_turns_images_upright_by_their_exif_orientation(tmp_path):
    exif_rotated_jpeg(tmp_path / "turned.jpg")
    upright = load_image(tmp_path / "turned.jpg")
    assert upright.size == (20, 40)
    assert np.asarray(upright)[2, 10, 0] > 200  # the red half is on top once turned
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    scan = SimpleNamespace(records=[], task_ids=[], source="d.json")
    args = SimpleNamespace(image_folder=str(tmp_path), image_processor=processor, image_aspect_ratio="pad",
                           is_multimodal=True, mm_use_im_start_end=False)  # fmt: skip
    dataset = LazySupervisedDataset(scan, None, get_conv_template("v1"), args)
    expected = process_images([upright], processor, SimpleNamespace(image_aspect_ratio="pad"))[0]
    assert np.allclose(dataset._image_tensor("turned.jpg").numpy(), expected.numpy())


@pytest.fixture
def bad_images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(folder / "good.png")
    whole = (folder / "good.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / "cut.jpg", quality=95)
    (folder / "cut.jpg").write_bytes((folder / "cut.jpg").read_bytes()[:300])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image")
    Image.new("L", (300, 300)).save(folder / "huge.png")
    return folder


def image_record(rid: str, image: str, task: str = "ColorQA") -> dict:
    return {"id": rid, "task": task, "image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "green"}]}  # fmt: skip


def test_check_data_decodes_every_image(bad_images, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # huge.png has 90,000 pixels, over twice the limit
    names = ["good.png", "cut.png", "cut.jpg", "empty.jpg", "notes.jpg", "huge.png"]
    records = [image_record(f"r{i}", name) for i, name in enumerate(names)]
    report = check_data.check_records(records, bad_images, TASKS)
    unreadable = report.problems[check_data.UNREADABLE_IMAGE]
    assert unreadable.count == 4
    assert [e.split(":")[0] for e in unreadable.examples] == [
        "record 1 (id 'r1')", "record 2 (id 'r2')", "record 3 (id 'r3')", "record 4 (id 'r4')"]  # fmt: skip
    assert all("cannot open image file" in e for e in unreadable.examples)
    too_large = report.problems[check_data.TOO_LARGE_IMAGE]
    assert too_large.count == 1 and "record 5 (id 'r5')" in too_large.examples[0]
    assert "huge.png is too large to decode safely" in too_large.examples[0]
    text = report.format()
    assert "FAILED: 5 problem(s)" in text and "OK" not in text


def test_the_training_scan_opens_every_image(bad_images, tmp_path, monkeypatch):
    names = ["good.png", "empty.jpg", "notes.jpg"]
    data = tmp_path / "train.json"
    data.write_text(json.dumps([image_record(f"r{i}", name) for i, name in enumerate(names)]))
    with pytest.raises(ValueError, match=r"record 1 \(id 'r1'\).*cannot open image file .*empty\.jpg.*--skip_missing_images"):
        scan_data(data, bad_images, TASKS)
    scan = scan_data(data, bad_images, TASKS, skip_missing_images=True)
    assert [r["id"] for r in scan.records] == ["r0"] and scan.skipped_missing_images == 2
    assert "missing or unreadable" in scan.summary()

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    data.write_text(json.dumps([image_record("r0", "good.png"), image_record("big", "huge.png")]))
    for skip in (False, True):
        with pytest.raises(ImageTooLargeError, match=r"record 1 \(id 'big'\).*huge\.png is too large"):
            scan_data(data, bad_images, TASKS, skip_missing_images=skip)


def test_a_truncated_image_met_in_training_names_its_record(bad_images):
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    scan = SimpleNamespace(records=[image_record("cut-one", "cut.jpg")], task_ids=[0], source="train.json")
    args = SimpleNamespace(image_folder=str(bad_images), image_processor=processor, image_aspect_ratio="pad",
                           is_multimodal=True, mm_use_im_start_end=False)  # fmt: skip
    dataset = LazySupervisedDataset(scan, None, get_conv_template("v1"), args)
    with pytest.raises(ValueError, match=r"train\.json: record 0 \(id 'cut-one'\): cannot open image file .*cut\.jpg"):
        dataset[0]


def test_inference_refuses_an_over_large_image_even_when_skipping(tmp_path, generator, monkeypatch):  # noqa: F811
    data = write_questions(tmp_path)
    Image.new("L", (300, 300)).save(data[1] / "4.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    with pytest.raises(ImageTooLargeError, match=r"record 4 \(id 'q4'\).*4\.png is too large to decode safely"):
        run_inference(make_job(data, tmp_path / "answers", skip_missing_images=True), Loader(generator))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": None}, r"record 0 \(id 'r0'\): 'image' is None"),
        ({"drop_image": True}, r"record 0 \(id 'r0'\): <image> appears 1 time\(s\) but the record has no image"),
        ({"question": "<image>\n<image>\nWhat?"}, r"record 0 \(id 'r0'\): <image> appears 2 times for 1 image"),
    ],
)
def test_training_refuses_image_markers_without_their_image(bad_images, tmp_path, change, message):
    rec = image_record("r0", "good.png")
    if change.pop("drop_image", False):
        del rec["image"]
    if "question" in change:
        rec["conversations"][0]["value"] = change.pop("question")
    rec.update(change)
    data = tmp_path / "train.json"
    data.write_text(json.dumps([rec]))
    with pytest.raises(ValueError, match=message):
        scan_data(data, bad_images, TASKS)
