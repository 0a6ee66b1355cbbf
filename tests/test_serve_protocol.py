"""llava.serve's controller and model workers speak upstream LLaVA's HTTP protocol.

A real controller and two real workers (two tiny checkpoints, different seeds) run as processes on 127.0.0.1;
the client below makes the requests upstream's scripts and web demo make (llava/serve/test_message.py,
gradio_web_server.py): refresh, list models, ask the controller for a worker, stream that worker's answer.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
import requests
from PIL import Image
from serve_helpers import HEART_BEAT_EXPIRATION, MODEL_A, MODEL_B, free_port, stack

from llava.generation import LlavaGenerator
from llava.mm_utils import tokenizer_image_token
from llava.serve.common import image_to_base64

# A real controller and workers run as processes (started once per session).
pytestmark = [pytest.mark.slow, pytest.mark.e2e]

QUESTION = "What is in the image?"
MAX_NEW_TOKENS = 24
DOOMED = "llava-v1.5-tiny-doomed"  # a third worker, killed by the last test


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    started = stack(tmp_path_factory.getbasetemp() / "serve_stack")
    if DOOMED not in started.processes:  # loads while the other tests run
        started.start_worker(DOOMED, started.checkpoints[MODEL_A])
    return started


@pytest.fixture(scope="module")
def picture():
    image = Image.new("RGB", (40, 28), (20, 130, 60))
    for x in range(10, 22):
        for y in range(6, 18):
            image.putpixel((x, y), (200, 30, 30))
    return image


@pytest.fixture(scope="module")
def references(served, picture):
    """Each model's answer through the project's own chat path (llava.serve.cli's), greedy."""
    answers = {}
    for name, path in served.checkpoints.items():
        generator = LlavaGenerator.from_pretrained(path, conv_mode="llava_v1", device="cpu", verbose=False,
                                                   temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
        conversation = generator.new_conversation()
        answer = generator.stream_chat(conversation, QUESTION, image=picture)
        conversation.messages[-1][-1] = None
        answers[name] = {"prompt": conversation.get_prompt(), "answer": answer, "generator": generator}
    return answers


# --- the client: upstream's documented requests ------------------------------------------------------------


def post(url: str, **payload) -> dict:
    r = requests.post(url, json=payload or None, headers={"User-Agent": "LLaVA Client"}, timeout=30)
    r.raise_for_status()
    return r.json()


def stream(url: str, payload: dict) -> list[dict]:
    """Every chunk of a /worker_generate_stream answer (NUL-delimited JSON)."""
    r = requests.post(url + "/worker_generate_stream", json=payload, headers={"User-Agent": "LLaVA Client"},
                      stream=True, timeout=60)  # fmt: skip
    return [json.loads(c.decode("utf-8")) for c in r.iter_lines(chunk_size=8192, decode_unicode=False,
                                                                  delimiter=b"\0") if c]  # fmt: skip


def ask(served, model: str, prompt: str, images: list[str], stop: str | None = "</s>", **extra) -> list[dict]:
    address = post(served.controller_url + "/get_worker_address", model=model)["address"]
    payload = {"model": model, "prompt": prompt, "temperature": 0.0, "top_p": 1.0,
               "max_new_tokens": MAX_NEW_TOKENS, "stop": stop, "images": images, **extra}  # fmt: skip
    return stream(address, payload)


# --- tests ------------------------------------------------------------------------------------------------


def test_controller_lists_both_models_and_gives_each_its_workers_address(served):
    post(served.controller_url + "/refresh_all_workers")
    models = post(served.controller_url + "/list_models")["models"]
    assert models == sorted(models) and set(models) - {DOOMED} == {MODEL_A, MODEL_B}
    for name in (MODEL_A, MODEL_B):
        assert post(served.controller_url + "/get_worker_address", model=name) == {"address": served.workers[name]}
    status = post(served.controller_url + "/worker_get_status")
    assert status["model_names"] == models and status["speed"] == len(models)


def test_worker_status_details_and_token_count(served, references):
    url = served.workers[MODEL_A]
    assert post(url + "/worker_get_status") == {"model_names": [MODEL_A], "speed": 1, "queue_length": 0}
    assert post(url + "/model_details") == {"context_length": 512}  # the tiny config's max_position_embeddings
    prompt = references[MODEL_A]["prompt"]
    expected = len(tokenizer_image_token(prompt, references[MODEL_A]["generator"].tokenizer))
    assert post(url + "/count_token", prompt=prompt) == {"count": expected, "error_code": 0}


@pytest.mark.parametrize("model", [MODEL_A, MODEL_B])
def test_streamed_answer_is_the_clis_answer(served, references, picture, model):
    ref = references[model]
    chunks = ask(served, model, ref["prompt"], [image_to_base64(picture)], max_new_tokens=MAX_NEW_TOKENS)
    assert all(c["error_code"] == 0 for c in chunks)
    texts = [c["text"] for c in chunks]
    assert all(t.startswith(ref["prompt"]) for t in texts)  # upstream: prompt + output so far
    assert len(texts) > 2  # streamed token by token, not in one piece
    answers = [t[len(ref["prompt"]):].strip() for t in texts]
    assert answers[-1] == ref["answer"] and ref["answer"]
    # A client sees the answer grow (the last partial word may still change as bytes complete a character).
    assert len(answers[len(answers) // 2]) <= len(answers[-1])


def test_the_two_models_answer_differently(references):
    assert references[MODEL_A]["answer"] != references[MODEL_B]["answer"]


def test_the_controller_proxies_a_workers_stream(served, references, picture):
    ref = references[MODEL_B]
    payload = {"model": MODEL_B, "prompt": ref["prompt"], "temperature": 0, "max_new_tokens": MAX_NEW_TOKENS,
               "stop": "</s>", "images": [image_to_base64(picture)]}  # fmt: skip
    chunks = stream(served.controller_url, payload)
    assert chunks[-1]["error_code"] == 0
    assert chunks[-1]["text"][len(ref["prompt"]):].strip() == ref["answer"]


def test_stop_string_is_honoured(served, references, picture):
    ref = references[MODEL_A]
    full = ref["answer"]
    # A stop string that occurs after the start of the answer: two ASCII letters/digits.
    stop = next(full[i:i + 2] for i in range(1, len(full) - 1)
                if full[i:i + 2].isascii() and full[i:i + 2].isalnum() and full.index(full[i:i + 2]) > 0)  # fmt: skip
    chunks = ask(served, MODEL_A, ref["prompt"], [image_to_base64(picture)], stop=stop)
    answers = [c["text"][len(ref["prompt"]):] for c in chunks]
    assert all(stop not in a for a in answers)
    assert answers[-1].strip() == full[: full.index(stop)].strip()


def test_an_image_that_is_not_an_image_is_an_error_chunk(served, references, picture):
    ref = references[MODEL_A]
    for bad in (base64.b64encode(b"this is a text file, not a picture").decode(), "%%% not base64 %%%"):
        chunks = ask(served, MODEL_A, ref["prompt"], [bad])
        assert len(chunks) == 1 and chunks[0]["error_code"] != 0
        assert "image 1 of 1 is not a readable image" in chunks[0]["text"]
    # More images than <image> markers is refused with the counts.
    chunks = ask(served, MODEL_A, ref["prompt"], [image_to_base64(picture)] * 2)
    assert chunks[0]["error_code"] != 0 and "1 <image> markers but the request carries 2 images" in chunks[0]["text"]
    # The worker is still serving.
    assert ask(served, MODEL_A, ref["prompt"], [image_to_base64(picture)])[-1]["text"].endswith(ref["answer"])


def test_a_model_nobody_serves(served, references, picture):
    assert post(served.controller_url + "/get_worker_address", model="llava-nobody") == {"address": ""}
    payload = {"model": "llava-nobody", "prompt": references[MODEL_A]["prompt"], "images": []}
    chunks = stream(served.controller_url, payload)
    assert len(chunks) == 1 and chunks[0]["error_code"] == 2
    assert "no worker serves model 'llava-nobody'" in chunks[0]["text"]


def test_a_worker_that_dies_is_dropped_after_its_heartbeat_expires(served):
    name = DOOMED
    served.wait_for_models({name})
    assert post(served.controller_url + "/get_worker_address", model=name)["address"] == served.workers[name]
    # Alive, it stays listed across several expiry periods thanks to its heartbeats.
    time.sleep(2 * HEART_BEAT_EXPIRATION)
    assert name in post(served.controller_url + "/list_models")["models"]
    served.stop(name)
    killed = time.time()
    while name in post(served.controller_url + "/list_models")["models"]:
        assert time.time() - killed < 3 * HEART_BEAT_EXPIRATION, "the dead worker is still listed"
        time.sleep(0.2)
    assert time.time() - killed >= HEART_BEAT_EXPIRATION - 1.0  # dropped by expiry (last beat <= 0.5 s before)
    assert post(served.controller_url + "/get_worker_address", model=name) == {"address": ""}
    assert sorted(post(served.controller_url + "/list_models")["models"]) == sorted([MODEL_A, MODEL_B])


def test_upstreams_command_line_client_and_registration_script(served, references, picture, tmp_path, capsys):
    from llava.serve import register_worker, test_message

    picture_file = tmp_path / "picture.png"
    picture.save(picture_file)
    argv = ["--controller-address", served.controller_url, "--model-name", MODEL_B, "--image-file",
            str(picture_file), "--message", QUESTION, "--conv-mode", "llava_v1", "--max-new-tokens",
            str(MAX_NEW_TOKENS), "--temperature", "0"]  # fmt: skip
    assert test_message.main(argv) == 0
    out = capsys.readouterr().out
    assert f"worker: {served.workers[MODEL_B]}" in out and out.rstrip("\n").endswith(references[MODEL_B]["answer"])
    assert test_message.main(["--controller-address", served.controller_url, "--model-name", "llava-nobody"]) == 1
    assert "no worker serves model 'llava-nobody'" in capsys.readouterr().err
    # A worker registered by hand: the controller asks it for its status; an address nobody answers is refused.
    worker = served.workers[MODEL_A]
    assert register_worker.main(["--controller-address", served.controller_url, "--worker-name", worker,
                                 "--check-heart-beat"]) == 0  # fmt: skip
    assert post(served.controller_url + "/get_worker_address", model=MODEL_A)["address"] == worker


    nobody = f"http://127.0.0.1:{free_port()}"
    assert register_worker.main(["--controller-address", served.controller_url, "--worker-name", nobody]) == 1
    assert "did not answer /worker_get_status" in capsys.readouterr().err
