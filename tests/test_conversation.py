import pytest

from llava.conversation import conv_templates, get_conv_template

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def _two_rounds(name):
    conv = get_conv_template(name)
    conv.append_message(conv.roles[0], "<image>\nWhat is it?")
    conv.append_message(conv.roles[1], "A cat.")
    conv.append_message(conv.roles[0], "Colour?")
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def test_vicuna_v1_prompt_uses_space_after_user_and_eos_after_assistant():
    expected = VICUNA_SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT:"
    assert _two_rounds("vicuna_v1") == expected
    assert _two_rounds("v1") == expected


def test_llava_v1_uses_the_human_system_prompt():
    assert _two_rounds("llava_v1") == HUMAN_SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT:"


def test_plain_template_is_the_bare_answer_after_the_image():
    conv = get_conv_template("plain")
    conv.append_message(conv.roles[0], "<image>")
    conv.append_message(conv.roles[1], "a red circle")
    assert conv.get_prompt() == "<image>\na red circle\n"


def test_llava_llama_2_wraps_system_and_instructions():
    conv = get_conv_template("llava_llama_2")
    conv.append_message(conv.roles[0], "Hi")
    conv.append_message(conv.roles[1], "Hello")
    conv.append_message(conv.roles[0], "Bye")
    conv.append_message(conv.roles[1], None)
    system = conv.system
    assert conv.get_prompt() == f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]"


def test_v0_keeps_its_one_shot_example_and_hash_separator():
    conv = get_conv_template("v0")
    conv.append_message(conv.roles[0], "Hi")
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    assert prompt.startswith(HUMAN_SYSTEM + "###Human: What are the key differences between renewable")
    assert prompt.endswith("###Human: Hi###Assistant:")
    assert conv.offset == 2


def test_image_tuple_message_puts_image_token_first():
    conv = get_conv_template("vicuna_v1")
    conv.append_message(conv.roles[0], ("What is it?\n<image>", None, "Pad"))
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt().endswith("USER: <image>\nWhat is it? ASSISTANT:")


def test_copy_is_independent_of_the_template():
    conv = get_conv_template("vicuna_v1")
    conv.append_message("USER", "x")
    assert conv_templates["vicuna_v1"].messages == []


def test_unknown_mode_lists_known_modes():
    with pytest.raises(ValueError, match="unknown conversation mode 'vicuna_v9'.*vicuna_v1"):
        get_conv_template("vicuna_v9")
