"""LlavaGenerator's streaming hook, which the model worker answers through: the streamed texts end in the
batch path's answer, whatever the interval, and the stop string and errors behave as in `generate`."""

from __future__ import annotations

import pytest
from PIL import Image

from llava.generation import LlavaGenerator


@pytest.fixture(scope="module")
def generator(tiny_llava):
    return LlavaGenerator.from_pretrained(tiny_llava["full"], conv_mode="llava_v1", device="cpu", verbose=False,
                                          temperature=0.0, max_new_tokens=20)  # fmt: skip


@pytest.fixture(scope="module")
def prompt_and_image(generator):
    return generator.build_prompt("What is in the image?", has_image=True), Image.new("RGB", (30, 20), (9, 99, 199))


def test_streamed_texts_end_in_the_batch_answer(generator, prompt_and_image):
    prompt, image = prompt_and_image
    expected = generator.generate_from_prompts([prompt], [[image]])[0]
    every_token = list(generator.stream_from_prompt(prompt, [image]))
    every_fourth = list(generator.stream_from_prompt(prompt, [image], interval=4))
    assert expected and every_token[-1] == expected and every_fourth[-1] == expected
    # One text per new token (20, or fewer when EOS comes first) plus the final one; a quarter as many at 4.
    assert 3 <= len(every_token) <= 21 and len(every_fourth) == (len(every_token) - 1) // 4 + 1
    assert every_fourth[:-1] == every_token[3:-1:4]


def test_a_stop_string_override_and_none(generator, prompt_and_image):
    prompt, image = prompt_and_image
    full = generator.with_settings(stop="").generate_from_prompts([prompt], [[image]])[0]
    stop = next(full[i:i + 2] for i in range(1, len(full) - 1)
                if full[i:i + 2].isascii() and full[i:i + 2].isalnum() and full.index(full[i:i + 2]) > 0)  # fmt: skip
    texts = list(generator.with_settings(stop=stop).stream_from_prompt(prompt, [image]))
    assert texts[-1] == full[: full.index(stop)].strip() and all(stop not in t for t in texts)
    assert generator.stop is None and generator.stop_str == "</s>"  # the template's, untouched by the copies


def test_settings_are_checked_and_errors_surface(generator, prompt_and_image):
    prompt, image = prompt_and_image
    with pytest.raises(ValueError, match="unknown generation settings: colour"):
        generator.with_settings(colour="red")
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generator.with_settings(temperature=-1)
    with pytest.raises(ValueError, match="1 <image> markers but 2 images"):
        next(generator.stream_from_prompt(prompt, [image, image]))
    with pytest.raises(ValueError, match="interval must be >= 1"):
        next(generator.stream_from_prompt(prompt, [image], interval=0))
