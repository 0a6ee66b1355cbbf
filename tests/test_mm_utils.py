import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessor

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    expand2square,
    get_model_name_from_path,
    load_image,
    process_images,
    tokenizer_image_token,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_llava):
    return AutoTokenizer.from_pretrained(tiny_llava["full"], use_fast=False)


def test_image_token_ids_keep_one_bos_and_mark_each_image(tokenizer):
    ids = tokenizer_image_token("USER: <image>\nHi <image> there", tokenizer)
    first = tokenizer("USER: ").input_ids
    second = tokenizer("\nHi ").input_ids
    third = tokenizer(" there").input_ids
    expected = first + [IMAGE_TOKEN_INDEX] + second[1:] + [IMAGE_TOKEN_INDEX] + third[1:]
    assert ids == expected
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(IMAGE_TOKEN_INDEX) == 2


def test_image_token_at_start_and_tensor_output(tokenizer):
    ids = tokenizer_image_token("<image>\nQ", tokenizer, return_tensors="pt")
    assert isinstance(ids, torch.Tensor)
    assert ids[:2].tolist() == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]
    with pytest.raises(ValueError, match="unsupported tensor type"):
        tokenizer_image_token("<image>", tokenizer, return_tensors="np")


def test_chunk_memo_gives_the_tokenizers_own_ids_and_follows_added_tokens(tiny_llava):
    from llava import mm_utils

    tokenizer = AutoTokenizer.from_pretrained(tiny_llava["full"], use_fast=False)  # its own memo
    prompt = "A chat. USER: <image>\nWhat colour is the <new_word> circle? ASSISTANT:"
    first = tokenizer_image_token(prompt, tokenizer)
    memo = mm_utils._chunk_caches[tokenizer]
    assert len(memo) == 2  # one entry per text chunk
    first.append(12345)  # the caller's list is its own: the memo is not changed through it
    second = tokenizer_image_token(prompt, tokenizer)
    expected = (tokenizer("A chat. USER: ").input_ids + [IMAGE_TOKEN_INDEX]
                + tokenizer("\nWhat colour is the <new_word> circle? ASSISTANT:").input_ids[1:])  # fmt: skip
    assert second == expected and len(memo) == 2
    # A token added afterwards changes the ids of text containing it: the old entry must not answer.
    tokenizer.add_tokens(["<new_word>"])
    new_id = tokenizer.convert_tokens_to_ids("<new_word>")
    third = tokenizer_image_token(prompt, tokenizer)
    assert new_id in third and new_id not in second
    assert third == tokenizer("A chat. USER: ").input_ids + [IMAGE_TOKEN_INDEX] + tokenizer(
        "\nWhat colour is the <new_word> circle? ASSISTANT:").input_ids[1:]  # fmt: skip
    # Bounded: the oldest entries go first.
    for i in range(mm_utils.CHUNK_CACHE_SIZE + 5):
        mm_utils._chunk_ids(tokenizer, f"word {i}")
    assert len(memo) == mm_utils.CHUNK_CACHE_SIZE
    assert ("word 0", len(tokenizer), tokenizer.add_bos_token, tokenizer.add_eos_token) not in memo


def test_expand2square_pads_symmetrically_with_the_fill_colour():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = expand2square(image, (1, 2, 3))
    assert square.size == (40, 40)
    # 20 pixels of padding split 10 above, 10 below.
    assert square.getpixel((0, 9)) == (1, 2, 3)
    assert square.getpixel((0, 10)) == (255, 0, 0)
    assert square.getpixel((39, 29)) == (255, 0, 0)
    assert square.getpixel((39, 30)) == (1, 2, 3)
    tall = expand2square(Image.new("RGB", (5, 8), (0, 0, 0)), (9, 9, 9))
    assert tall.size == (8, 8) and tall.getpixel((0, 0)) == (9, 9, 9) and tall.getpixel((1, 0)) == (0, 0, 0)


class _Cfg:
    def __init__(self, mode):
        self.image_aspect_ratio = mode


def test_pad_mode_fills_with_processor_mean_before_resizing():
    processor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    # Already the target width, so no resampling blurs the edges: 2 rows of fill above and below.
    image = Image.new("RGB", (8, 4), (255, 255, 255))
    padded = process_images([image], processor, _Cfg("pad"))
    assert padded.shape == (1, 3, 8, 8)
    mean_rgb = tuple(int(m * 255) for m in processor.image_mean)
    expected_corner = (mean_rgb[0] / 255 - processor.image_mean[0]) / processor.image_std[0]
    assert padded[0, 0, 0, 0].item() == pytest.approx(expected_corner, abs=0.02)
    white = (1.0 - processor.image_mean[0]) / processor.image_std[0]
    assert padded[0, 0, 1, 4].item() == pytest.approx(expected_corner, abs=0.02)
    assert padded[0, 0, 2, 4].item() == pytest.approx(white, abs=0.02)
    assert padded[0, 0, 6, 0].item() == pytest.approx(expected_corner, abs=0.02)
    # Other modes let the processor resize and centre-crop: no padding colour appears.
    cropped = process_images([Image.new("RGB", (16, 8), (255, 255, 255))], processor, _Cfg(None))
    assert cropped.shape == (1, 3, 8, 8)
    assert cropped[0, 0, 0, 0].item() == pytest.approx(white, abs=0.02)


def test_model_name_from_path():
    assert get_model_name_from_path("/x/llava-v1.5-7b/") == "llava-v1.5-7b"
    assert get_model_name_from_path("/x/run-lora/checkpoint-500") == "run-lora_checkpoint-500"


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.jpg"):
        load_image(bad)


def test_keyword_stopping_waits_for_every_sequence(tokenizer):
    stop_ids = tokenizer("</s>").input_ids[1:]
    criteria = KeywordsStoppingCriteria(["</s>"], tokenizer, torch.zeros(2, 3, dtype=torch.long))
    prompt = torch.ones(2, 3, dtype=torch.long) * 5
    first = torch.cat([prompt, torch.tensor([[7] + stop_ids, [7] * (1 + len(stop_ids))])], dim=1)
    assert criteria(first, None) is False
    second = torch.cat([first, torch.tensor([[8] + stop_ids, [8] + stop_ids])], dim=1)
    assert criteria(second, None) is True


def test_vision_check_is_cached_and_preprocessing_unchanged(monkeypatch):
    import importlib.metadata

    import numpy as np
    import transformers.image_utils
    from transformers.utils import import_utils

    from llava.mm_utils import cache_transformers_vision_check, process_images

    cache_transformers_vision_check()
    cache_transformers_vision_check()  # idempotent: still one cache over the original
    cached = import_utils.is_vision_available
    assert hasattr(cached, "cache_info") and not hasattr(cached.__wrapped__, "cache_info")
    assert transformers.image_utils.is_vision_available is cached
    assert import_utils.BACKENDS_MAPPING["vision"][0] is cached
    assert cached() is True

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 48), (48, 30))]
    processor = CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    cfg = type("Cfg", (), {"image_aspect_ratio": "pad"})()
    calls = []
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: calls.append(name) or real_version(name))
    fast = process_images(images, processor, cfg)
    assert calls == []  # no metadata read per image any more
    # The uncached original gives the same pixels (and reads Pillow's metadata on every call).
    monkeypatch.setattr(transformers.image_utils, "is_vision_available", cached.__wrapped__)
    monkeypatch.setattr(import_utils, "BACKENDS_MAPPING",
                        {**import_utils.BACKENDS_MAPPING, "vision": (cached.__wrapped__, "")})  # fmt: skip
    slow = process_images(images, processor, cfg)
    assert "Pillow" in calls
    assert torch.equal(fast, slow) and fast.shape == (2, 3, 48, 48)
