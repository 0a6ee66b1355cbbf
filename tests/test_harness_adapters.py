"""The calls lmms-eval's `llava` class and VLMEvalKit's `LLaVA` class make, replayed on a tiny checkpoint.

The sequences follow those adapters (lmms-eval 0.7.3 `models/simple/llava.py`, VLMEvalKit
`vlmeval/vlm/llava/llava.py`) on a CPU: same imports, keyword arguments, dtype casts and decoding. The
reference answers come from our own generation path on the same model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    get_model_name_from_path,
    process_images,
    tokenizer_image_token,
)
from llava.model import llama_sdpa_attn as sdpa
from llava.model.builder import load_pretrained_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def keep_attention():
    """Loading with attn_implementation changes this process's LLaMA attention: put it back after each test."""
    installed = sdpa.sdpa_installed()
    yield
    if installed:
        sdpa.replace_llama_attn_with_sdpa()
    else:
        sdpa.restore_llama_attention()


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [Image.new("RGB", (40, 24), (200, 40, 30)), Image.new("RGB", (18, 30), (20, 60, 210))]


def _prompt(question: str, template: str = "vicuna_v1") -> str:
    conv = conv_templates[template].copy()
    conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{question}")
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def test_lmms_eval_llava_class_call_sequence(lively_checkpoint, images):
    # __init__: the model name from the path, then the builder with the adapter's keyword arguments (on a CPU
    # the adapter is run with device_map=auto); then eval() and tie_weights().
    model_name = get_model_name_from_path(lively_checkpoint)
    tokenizer, model, image_processor, max_length = load_pretrained_model(
        lively_checkpoint, None, model_name, device_map="auto", multimodal=True, attn_implementation="sdpa",
    )  # fmt: skip
    assert sdpa.sdpa_installed() and max_length == 2048
    model.eval()
    model.tie_weights()
    config = model.config

    # generate_until: fp16 pixels, vicuna_v1 prompts, right-padded ids, image_sizes, greedy decoding.
    questions = ["What is in the image?", "Which colour?"]
    pixels = process_images(images, image_processor, config)
    half = pixels.to(dtype=torch.float16, device=model.device)
    prompts = [_prompt(q) for q in questions]
    ids = [tokenizer_image_token(p, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt") for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = pad_sequence(ids, batch_first=True, padding_value=pad)
    attention_mask = input_ids.ne(pad)
    cont = model.generate(
        input_ids, attention_mask=attention_mask, pad_token_id=pad, images=half,
        image_sizes=[image.size for image in images], do_sample=False, temperature=0, top_p=None, num_beams=1,
        max_new_tokens=6, use_cache=True,
    )  # fmt: skip
    answers = tokenizer.batch_decode(cont, skip_special_tokens=True)

    # The same model answering each question alone, from the fp16-rounded pixels in its own dtype.
    sdpa.restore_llama_attention()
    expected = []
    for prompt, image_pixels in zip(ids, half):
        out = model.generate(prompt.unsqueeze(0), images=image_pixels.unsqueeze(0).float(), do_sample=False,
                             max_new_tokens=6)  # fmt: skip
        expected.append(tokenizer.batch_decode(out, skip_special_tokens=True)[0])
    assert answers == expected
    assert all(answers) and answers[0] != answers[1]

    # loglikelihood: forward with labels, fp16 pixels and image_sizes.
    context = tokenizer_image_token(prompts[0], tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    full_prompt = prompts[0] + " a red square"
    full = tokenizer_image_token(full_prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    labels = full.clone()
    labels[0, : context.shape[1]] = -100
    with torch.inference_mode():
        outputs = model(input_ids=full, labels=labels, images=half[:1], use_cache=True,
                        image_sizes=[list(images[0].size)])  # fmt: skip
        plain = model(input_ids=full, labels=labels, images=half[:1].float())
    assert torch.isfinite(outputs["loss"])
    torch.testing.assert_close(outputs["loss"], plain.loss)
    torch.testing.assert_close(outputs["logits"], plain.logits)


def test_vlmevalkit_llava_class_call_sequence(lively_checkpoint, images):
    model_name = get_model_name_from_path(lively_checkpoint)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_path=lively_checkpoint, model_base=None, model_name=model_name, device="cpu", device_map="cpu"
    )
    generation = dict(do_sample=False, temperature=0, max_new_tokens=8, top_p=None, num_beams=1, use_cache=True)
    system = (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions. "
    )
    args = types.SimpleNamespace(image_aspect_ratio="pad")  # the adapter's stand-in for a model config
    image_tensor = process_images(images[:1], image_processor, args).to("cpu", dtype=torch.float16)
    prompt = system + "USER: " + " <image> " + "What is in the image?" + " ASSISTANT: "
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    stopping = KeywordsStoppingCriteria(["</s>"], tokenizer, input_ids)
    with torch.inference_mode():
        output_ids = model.generate(input_ids, images=image_tensor, stopping_criteria=[stopping], **generation)
        reference = model.generate(input_ids, images=image_tensor.float(), do_sample=False, max_new_tokens=8)
    output = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
    assert output and output == tokenizer.batch_decode(reference, skip_special_tokens=True)[0].strip()


def test_stopping_criteria_given_the_prompt_stops_a_model_that_returns_only_new_tokens(tiny_llava):
    # Harnesses pass the prompt ids; our generate hands the criteria only the answer so far (shorter than the
    # prompt), which must still be searched for the keyword.
    tokenizer, _, _, _ = load_pretrained_model(tiny_llava["full"], None, "llava-tiny", device="cpu", verbose=False)
    prompt = torch.tensor([tokenizer("A chat between a curious user and an assistant. USER: hi ASSISTANT:").input_ids])
    keyword_ids = tokenizer("###", add_special_tokens=False).input_ids
    answer = torch.tensor([[5, 6] + keyword_ids])
    assert answer.shape[1] < prompt.shape[1]
    assert KeywordsStoppingCriteria(["###"], tokenizer, prompt)(answer, None)
    assert not KeywordsStoppingCriteria(["###"], tokenizer, prompt)(torch.tensor([[5, 6, 7]]), None)
    # A caller whose model returns prompt + answer: the keyword inside the prompt does not count.
    with_prompt = torch.cat([torch.tensor([keyword_ids]), prompt[:, len(keyword_ids):], torch.tensor([[5, 6]])], 1)
    criteria = KeywordsStoppingCriteria(["###"], tokenizer, with_prompt[:, : prompt.shape[1]])
    assert not criteria(with_prompt, None)
    assert criteria(torch.cat([with_prompt, torch.tensor([keyword_ids])], 1), None)


def test_image_sizes_leave_forward_and_generate_unchanged(lively_checkpoint, images):
    tokenizer, model, processor, _ = load_pretrained_model(lively_checkpoint, None, "llava-tiny", device="cpu",
                                                           verbose=False)  # fmt: skip
    pixels = process_images(images[:1], processor, model.config)
    ids = tokenizer_image_token(_prompt("Where?"), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    with torch.no_grad():
        with_sizes = model(input_ids=ids, images=pixels, image_sizes=[images[0].size]).logits
        without = model(input_ids=ids, images=pixels).logits
    assert torch.equal(with_sizes, without)
    a = model.generate(ids, images=pixels, image_sizes=[images[0].size], do_sample=False, max_new_tokens=6)
    b = model.generate(ids, images=pixels, do_sample=False, max_new_tokens=6)
    assert torch.equal(a, b) and a.shape == (1, 6)


def test_fp16_pixels_into_an_fp32_model(lively_checkpoint, images):
    _, model, processor, _ = load_pretrained_model(lively_checkpoint, None, "llava-tiny", device="cpu", verbose=False)
    pixels = process_images(images, processor, model.config)
    features = model.encode_images(pixels.half())
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, model.encode_images(pixels.half().float()))


def test_builder_keywords_of_later_llava_versions(tiny_llava, tmp_path, capsys):
    full = tiny_llava["full"]
    _, model, _, _ = load_pretrained_model(full, None, "llava-tiny", device="cpu", use_flash_attn=False,
                                           attn_implementation="eager", verbose=False)  # fmt: skip
    assert not sdpa.sdpa_installed()
    _, model, _, _ = load_pretrained_model(full, None, "llava-tiny", device_map="cpu", torch_dtype="bfloat16",
                                           use_flash_attention_2=False, trust_remote_code=True, verbose=False)  # fmt: skip
    assert model.dtype == torch.bfloat16 and model.get_vision_tower().dtype == torch.bfloat16
    # multimodal=True: a LLaVA checkpoint whatever its name says.
    renamed = tmp_path / "my-model"
    shutil.copytree(full, renamed)
    _, _, processor, _ = load_pretrained_model(str(renamed), None, "my-model", device="cpu", multimodal=True)
    assert processor is not None and "multimodal=True" in capsys.readouterr().out
    _, model, _, _ = load_pretrained_model(full, None, "llava-tiny", device="cpu", verbose=False,
                                           overwrite_config={"image_aspect_ratio": "square"})  # fmt: skip
    assert model.config.image_aspect_ratio == "square"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"use_flash_attn": True}, "needs a CUDA device.*'cpu'.*sdpa"),
        ({"attn_implementation": "flash_attention_2"}, "needs a CUDA device"),
        ({"use_flash_attention_2": True}, "needs a CUDA device"),
        ({"attn_implementation": "paged"}, "unknown attn_implementation 'paged'"),
        ({"use_flash_attn": True, "attn_implementation": "eager"}, "pass one of them"),
        ({"torch_dtype": "float99"}, "torch_dtype 'float99'"),
        ({"frobnicate": 1}, "unknown keyword argument.*frobnicate"),
        ({"customized_config": object()}, "customized_config"),
        ({"device_map": "cuda:0", "device": None}, "torch sees no CUDA device"),
    ],
)
def test_builder_refuses_what_it_cannot_honour_by_name(tiny_llava, kwargs, message):
    if "device_map" in kwargs and torch.cuda.is_available():
        kwargs = {"device_map": "cuda:0", "attn_implementation": "paged"}  # this machine has one: still refused
        message = "unknown attn_implementation"
    with pytest.raises(ValueError, match=message):
        load_pretrained_model(tiny_llava["full"], None, "llava-tiny", **{"device": "cpu", "verbose": False, **kwargs})


def test_model_class_takes_the_loading_options_lmms_eval_passes(tiny_llava):
    from llava.model import LlavaLlamaForCausalLM

    model = LlavaLlamaForCausalLM.from_pretrained(tiny_llava["full"], multimodal=True, attn_implementation="sdpa")
    assert sdpa.sdpa_installed()
    assert isinstance(model, LlavaLlamaForCausalLM)
    LlavaLlamaForCausalLM(model.config, multimodal=True, attn_implementation="eager")
    assert not sdpa.sdpa_installed()
    with pytest.raises(TypeError, match="unknown keyword argument.*colour"):
        LlavaLlamaForCausalLM(model.config, colour="red")


def test_harness_imports_keep_their_signatures():
    import inspect

    import llava.mm_utils as mm

    assert list(inspect.signature(mm.KeywordsStoppingCriteria).parameters)[:3] == ["keywords", "tokenizer", "input_ids"]
    assert list(inspect.signature(mm.tokenizer_image_token).parameters)[:4] == [
        "prompt", "tokenizer", "image_token_index", "return_tensors"]  # fmt: skip
    assert list(inspect.signature(mm.process_images).parameters) == ["images", "image_processor", "model_cfg"]
    assert list(inspect.signature(mm.get_model_name_from_path).parameters) == ["model_path"]
    assert list(inspect.signature(load_pretrained_model).parameters)[:5] == [
        "model_path", "model_base", "model_name", "load_8bit", "load_4bit"]  # fmt: skip
    assert IMAGE_TOKEN_INDEX == -200 and DEFAULT_IMAGE_TOKEN == "<image>"
    assert {"vicuna_v1", "llava_v1", "v1"} <= set(conv_templates)
    from llava.conversation import SeparatorStyle  # noqa: F401  (LLaVA-NeXT's VLMEvalKit class imports it)


# Issue 29: folders that are no LLaVA checkpoint, named with what they are or lack.


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.e2e
def test_clip_tower_folder_as_model_path_says_what_it_is(tiny_llava, tmp_path):
    tower = tiny_llava["vision_tower"]
    with pytest.raises(ValueError, match=f"{tower} is a vision tower.*clip_vision_model.*--vision_tower"):
        load_pretrained_model(tower, None, "vision_tower", device="cpu")
    picture = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(picture)
    proc = _run("-m", "llava.eval.run_llava", "--model-path", tower, "--image-file", str(picture), "--query", "q")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{tower} is a vision tower" in proc.stderr


@pytest.mark.slow
@pytest.mark.e2e
def test_clip_tower_folder_through_the_answering_commands(tiny_llava, tmp_path):
    tower = tiny_llava["vision_tower"]
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    record = {"id": "1", "image": "p.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                            {"from": "gpt", "value": "a"}]}  # fmt: skip
    (tmp_path / "q.json").write_text(json.dumps([record]))
    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1, "image": "p.png", "text": "q"}) + "\n")
    commands = [
        ["inference_visatb.py", "--question-file", str(tmp_path / "q.json"), "--answers-folder", str(tmp_path / "a")],
        ["-m", "llava.eval.model_vqa", "--question-file", str(tmp_path / "q.jsonl"), "--answers-file",
         str(tmp_path / "a.jsonl")],
    ]  # fmt: skip
    for command in commands:
        proc = _run(*command, "--model-path", tower, "--image-folder", str(tmp_path))
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert f"{tower} is a vision tower" in proc.stderr


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"foo": 1}, "has no model_type"),
        ({"model_type": "llava"}, "lacks hidden_size"),
        ({"model_type": "wibble"}, "model_type 'wibble'"),
        ("[1, 2", "not readable JSON"),
    ],
)
def test_junk_config_names_the_folder_and_what_is_wrong(tmp_path, config, message):
    folder = tmp_path / "llava-junk"
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(ValueError, match=message) as info:
        load_pretrained_model(str(folder), None, "llava-junk", device="cpu")
    assert str(folder) in str(info.value)


@pytest.mark.slow
@pytest.mark.e2e
def test_config_without_tokenizer_names_the_folder(tiny_llava, tmp_path):
    folder = tmp_path / "llava-no-tokenizer"
    folder.mkdir()
    shutil.copy(Path(tiny_llava["full"]) / "config.json", folder / "config.json")
    with pytest.raises(FileNotFoundError, match=f"{folder} has no tokenizer"):
        load_pretrained_model(str(folder), None, "llava-no-tokenizer", device="cpu")
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    proc = _run("-m", "llava.eval.run_llava", "--model-path", str(folder), "--image-file", str(tmp_path / "p.png"),
                "--query", "q")  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "KeyError" not in proc.stderr
    assert f"{folder} has no tokenizer" in proc.stderr
