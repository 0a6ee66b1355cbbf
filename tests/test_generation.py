"""LlavaGenerator: prompts, left-padded batches that answer exactly as one-at-a-time, decoding, chat."""

from __future__ import annotations

import pytest
from PIL import Image
from transformers import TextStreamer

from llava.generation import LlavaGenerator, infer_conv_mode

SYSTEM_V1 = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@pytest.fixture(scope="module")
def generator(lively_checkpoint) -> LlavaGenerator:
    return LlavaGenerator.from_pretrained(lively_checkpoint, max_new_tokens=8, verbose=False)


def image(color: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    return Image.new("RGB", size, color)


QUESTIONS = [
    "What is in the image?",
    "<image>\nDescribe the image in detail.",
    "What colour is the circle? Answer the question using a single word or phrase.",
    "yes or no",
    "Please provide the bounding box coordinate of the region this sentence describes: the red circle.",
    "one two",
]
IMAGES = [
    image((255, 0, 0), (40, 30)),
    image((0, 0, 255), (32, 32)),
    None,
    image((0, 255, 0), (20, 50)),
    None,
    image((10, 200, 30), (64, 64)),
]


def test_batched_greedy_equals_one_at_a_time_with_text_only_samples(generator):
    singles = [generator.generate([q], [img])[0] for q, img in zip(QUESTIONS, IMAGES)]
    # The comparison only means something if answers depend on the input.
    assert all(singles) and len(set(singles)) == len(singles)
    lengths = {len(generator.tokenizer(generator.build_prompt(q, img is not None)).input_ids) for q, img in zip(QUESTIONS, IMAGES)}
    assert len(lengths) > 3  # mixed prompt lengths, so rows really are left-padded

    assert generator.generate(QUESTIONS, IMAGES) == singles
    # Another grouping and order of the same samples.
    order = [5, 2, 0, 4, 1, 3]
    batched = generator.generate([QUESTIONS[i] for i in order], [IMAGES[i] for i in order])
    assert batched == [singles[i] for i in order]


def test_all_text_only_batch_equals_one_at_a_time(generator):
    questions = [QUESTIONS[2], QUESTIONS[4], "Describe a dog."]
    singles = [generator.generate([q], [None])[0] for q in questions]
    assert len(set(singles)) == 3
    assert generator.generate(questions, [None, None, None]) == singles


def test_the_image_changes_the_answer(generator):
    question = ["What is in the image?"]
    answers = {generator.generate(question, [image(color, (32, 32))])[0] for color in [(255, 0, 0), (0, 0, 255)]}
    assert len(answers) == 2


def test_prompt_puts_the_image_first_in_the_vicuna_v1_template(generator):
    expected = f"{SYSTEM_V1} USER: <image>\nWhat is this? ASSISTANT:"
    assert generator.build_prompt("What is this?", has_image=True) == expected
    assert generator.build_prompt("What is this?\n<image>", has_image=True) == expected
    assert generator.build_prompt("<image>\nWhat is this?", has_image=False) == f"{SYSTEM_V1} USER: What is this? ASSISTANT:"


def test_prompt_wraps_the_image_in_start_end_tokens_when_the_model_does(generator, monkeypatch):
    monkeypatch.setattr(generator.model.config, "mm_use_im_start_end", True, raising=False)
    prompt = generator.build_prompt("<image>\nWhat is this?", has_image=True)
    assert prompt == f"{SYSTEM_V1} USER: <im_start><image><im_end>\nWhat is this? ASSISTANT:"


def test_image_placeholders_mark_where_several_images_go(generator):
    question = "Compare <image-placeholder> with <image-placeholder>."
    assert generator.user_message(question, True, 2) == "Compare <image> with <image>."
    assert generator.user_message("Compare them.", True, 2) == "<image>\n<image>\nCompare them."
    with pytest.raises(ValueError, match="2 <image-placeholder> markers but 3 images"):
        generator.user_message(question, True, 3)


def test_two_images_in_one_sample_are_both_used(generator):
    first, second = image((255, 0, 0), (32, 32)), image((0, 0, 255), (32, 32))
    question = "Compare <image-placeholder> with <image-placeholder>."
    both = generator.generate([question], [[first, second]])[0]
    assert both != generator.generate([question], [[second, first]])[0]
    # Batched with a single-image and a text-only sample, the answer is unchanged.
    batched = generator.generate([question, QUESTIONS[0], QUESTIONS[2]], [[first, second], IMAGES[0], None])
    assert batched[0] == both


def test_decoding_cuts_at_the_first_eos(generator):
    tok = generator.tokenizer
    ids = tok("red circle", add_special_tokens=False).input_ids
    tail = tok("blue", add_special_tokens=False).input_ids
    assert generator._decode(ids + [tok.eos_token_id] + tail) == "red circle"
    assert generator._decode(ids + [tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]) == "red circle"


def test_decoding_drops_special_tokens_like_the_tokenizer(generator):
    tok = generator.tokenizer
    ids = [tok.bos_token_id, *tok("a red circle", add_special_tokens=False).input_ids, tok.unk_token_id, 57, 300]
    assert generator._decode(ids) == tok.decode(ids, skip_special_tokens=True).strip()


def test_decoding_cuts_at_a_stop_string_that_is_not_eos(lively_checkpoint, generator):
    v0 = LlavaGenerator(generator.tokenizer, generator.model, generator.image_processor, conv_mode="llava_v0")
    assert v0.stop_str == "###"
    ids = generator.tokenizer("a red circle ### Human: more", add_special_tokens=False).input_ids
    assert v0._decode(ids) == "a red circle"


def test_generation_kwargs_are_greedy_at_temperature_zero(generator):
    kwargs = generator.generation_kwargs()
    assert kwargs["do_sample"] is False and "temperature" not in kwargs and "top_p" not in kwargs
    sampling = LlavaGenerator(
        generator.tokenizer, generator.model, generator.image_processor, temperature=0.7, top_p=0.9
    )
    assert sampling.generation_kwargs() == {
        "do_sample": True, "num_beams": 1, "max_new_tokens": 128, "use_cache": True, "pad_token_id": 0,
        "eos_token_id": 2, "temperature": 0.7, "top_p": 0.9,
    }  # fmt: skip


class Collect(TextStreamer):
    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.text = ""

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text += text


def test_stream_chat_streams_the_answer_and_keeps_the_history(generator):
    picture = IMAGES[0]
    conversation = generator.new_conversation()
    streamer = Collect(generator.tokenizer)
    first = generator.stream_chat(conversation, "What is in the image?", image=picture, streamer=streamer)
    assert streamer.text.strip() == first
    assert first == generator.generate(["What is in the image?"], [picture])[0]

    second = generator.stream_chat(conversation, "And the colour?", image=picture)
    expected_prompt = f"{SYSTEM_V1} USER: <image>\nWhat is in the image? ASSISTANT: {first}</s>USER: And the colour? ASSISTANT:"
    assert generator.generate_from_prompts([expected_prompt], [[picture]])[0] == second
    assert conversation.messages[-1] == ["ASSISTANT", second]
    assert conversation.get_prompt().count("<image>") == 1


def test_conversation_mode_is_guessed_from_the_name_as_llava_does():
    assert infer_conv_mode("llava-v1.5-7b") == "llava_v1"
    assert infer_conv_mode("llava-llama-2-13b-chat") == "llava_llama_2"
    assert infer_conv_mode("llava-mpt-7b") == "mpt"
    assert infer_conv_mode("llava-tiny") == "llava_v0"


def test_bad_arguments_are_named(generator):
    with pytest.raises(ValueError, match="3 questions but 2 image entries"):
        generator.generate(["a", "b", "c"], [None, None])
    with pytest.raises(ValueError, match="unknown conversation mode 'nope'; known modes: .*vicuna_v1"):
        LlavaGenerator(generator.tokenizer, generator.model, generator.image_processor, conv_mode="nope")
    with pytest.raises(ValueError, match="num_beams must be >= 1"):
        LlavaGenerator(generator.tokenizer, generator.model, generator.image_processor, num_beams=0)
    with pytest.raises(ValueError, match="prompt 0 has 1 <image> markers but 0 images"):
        generator.generate_from_prompts(["USER: <image>\nhi ASSISTANT:"], [[]])
    assert generator.generate([], []) == []


def test_pad_token_defaults_to_unk(generator):
    assert generator.tokenizer.pad_token == "<unk>"
    assert generator.tokenizer.pad_token_id == 0


def test_image_preprocessing_rejects_an_unknown_mode():
    from llava.generation import image_preprocessing

    with pytest.raises(ValueError, match="image preprocessing must be one of pad, square, not 'crop'"):
        with image_preprocessing("crop"):
            pass
