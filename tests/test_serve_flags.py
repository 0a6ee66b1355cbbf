"""llava.serve in-process: the workers' upstream flags, the controller's dispatch and expiry, the demo's templates."""

from __future__ import annotations

import random
import time

import pytest
import torch
from PIL import Image

from llava.model import builder
from llava.serve import common, controller, gradio_web_server, model_worker


@pytest.mark.parametrize("flag, expected", [("--load-8bit", (True, False)), ("--load-4bit", (False, True)), (None, (False, False))])
def test_worker_quantisation_flags_reach_the_loader(monkeypatch, capsys, flag, expected):
    seen = {}

    def fake_load(model_path, model_base, model_name, load_8bit=False, load_4bit=False, device=None, **kwargs):
        seen.update(path=model_path, base=model_base, bits=(load_8bit, load_4bit), device=device)
        raise ValueError("stop here")

    monkeypatch.setattr(builder, "load_pretrained_model", fake_load)
    argv = ["--model-path", "ckpt/llava-v1.5-7b/", "--model-base", "base", "--no-register"] + ([flag] if flag else [])
    assert model_worker.main(argv) == 1
    assert seen == {"path": "ckpt/llava-v1.5-7b", "base": "base", "bits": expected, "device": None}
    assert "error: stop here" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_worker_4bit_on_a_cpu_is_a_clear_error(tiny_llava, capsys):
    argv = ["--model-path", tiny_llava["full"], "--load-4bit", "--device", "cpu", "--no-register"]
    assert model_worker.main(argv) == 1
    assert "8-bit / 4-bit loading needs a CUDA device (bitsandbytes)" in capsys.readouterr().err


def test_worker_8bit_and_4bit_together_are_refused(capsys):
    with pytest.raises(SystemExit) as done:
        model_worker.main(["--model-path", "m", "--load-8bit", "--load-4bit"])
    assert done.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def _status(queue: int, speed: float = 1.0, models=("m",)) -> dict:
    return {"model_names": list(models), "speed": speed, "queue_length": queue}


def test_shortest_queue_dispatch_counts_what_it_sends():
    c = controller.Controller("shortest_queue", expiration=100)
    try:
        c.register_worker("http://w1", True, _status(2))
        c.register_worker("http://w2", True, _status(0))
        # w2 is chosen until its queue (raised by one per request) reaches w1's; ties go to the first registered.
        assert [c.get_worker_address("m") for _ in range(3)] == ["http://w2", "http://w2", "http://w1"]
        assert c.receive_heart_beat("http://w2", 0) is True  # the worker reports its real queue again
        assert c.get_worker_address("m") == "http://w2"
        assert c.get_worker_address("other") == ""
    finally:
        c.close()


def test_lottery_dispatch_follows_the_workers_speeds():
    c = controller.Controller("lottery", expiration=100)
    try:
        c.register_worker("http://fast", True, _status(0, speed=3))
        c.register_worker("http://slow", True, _status(0, speed=1))
        random.seed(0)
        picks = [c.get_worker_address("m") for _ in range(4000)]
        assert abs(picks.count("http://fast") / len(picks) - 0.75) < 0.03
    finally:
        c.close()


def test_expired_workers_are_dropped_unless_they_opted_out_of_heartbeats():
    c = controller.Controller("shortest_queue", expiration=100)
    try:
        c.register_worker("http://beating", True, _status(0, models=["a"]))
        c.register_worker("http://silent", True, _status(0, models=["b"]))
        c.register_worker("http://unchecked", False, _status(0, models=["c"]))
        for name in ("http://silent", "http://unchecked"):
            c.workers[name].last_heart_beat = time.time() - 101
        c.remove_stale_workers()
        assert c.list_models() == ["a", "c"]
        assert c.receive_heart_beat("http://silent", 0) is False  # the worker registers again on this answer
    finally:
        c.close()


def test_unknown_dispatch_method_and_bad_timing_variables(monkeypatch):
    with pytest.raises(ValueError, match="lottery, shortest_queue"):
        controller.Controller("round_robin")
    monkeypatch.setenv("LLAVA_CONTROLLER_HEART_BEAT_EXPIRATION", "soon")
    with pytest.raises(SystemExit, match="LLAVA_CONTROLLER_HEART_BEAT_EXPIRATION='soon' is not a number"):
        common.heart_beat_expiration()
    monkeypatch.setenv("LLAVA_WORKER_HEART_BEAT_INTERVAL", "0.25")
    assert common.heart_beat_interval() == 0.25
    monkeypatch.delenv("LLAVA_CONTROLLER_HEART_BEAT_EXPIRATION")
    assert common.heart_beat_expiration() == 30.0  # upstream's


@pytest.mark.parametrize("name, mode, stop", [
    ("llava-v1.5-7b", "llava_v1", "</s>"),
    ("llava-v1.5-13b-visatb", "llava_v1", "</s>"),
    ("llava-llama-2-13b-chat-lightning-preview", "llava_llama_2", "</s>"),
    ("llava-v1-0719-336px-lora-merge-vicuna-13b-v1.3-mmtag", "v1_mmtag", "</s>"),
    ("llava-tiny", "llava_v0", "###"),
    ("vicuna-7b-v1.5", "vicuna_v1", "</s>"),
])  # fmt: skip
def test_the_demo_picks_upstreams_template_and_stop_string(name, mode, stop):
    assert gradio_web_server.conv_mode_for(name) == mode
    assert gradio_web_server.stop_for(gradio_web_server.get_conv_template(mode)) == stop


def test_the_image_goes_in_the_first_turn_and_a_new_image_starts_a_new_chat():
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    state = gradio_web_server.new_state()
    state, chat, box = gradio_web_server.add_text(state, "What is it?", red, "llava-v1.5-7b")
    assert box == "" and chat == [{"role": "user", "content": "What is it?"}]
    assert state["conv"].get_prompt().endswith("USER: <image>\nWhat is it? ASSISTANT:")
    state["conv"].messages[-1][-1] = "A red square."
    state, chat, _ = gradio_web_server.add_text(state, "And now?", red.copy(), "llava-v1.5-7b")  # same pixels
    prompt = state["conv"].get_prompt()
    assert prompt.count("<image>") == 1 and prompt.endswith("A red square.</s>USER: And now? ASSISTANT:")
    state, chat, _ = gradio_web_server.add_text(state, "What is it?", blue, "llava-v1.5-7b")
    assert len(chat) == 1 and state["image"].getpixel((0, 0)) == (0, 0, 255)


def test_the_demo_refuses_an_unknown_template(capsys):
    with pytest.raises(SystemExit, match="--conv-mode: unknown conversation mode 'nope'"):
        gradio_web_server.main(["--conv-mode", "nope"])
