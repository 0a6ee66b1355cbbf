"""The web demo in a real browser: headless Chromium (Debian's package) drives llava.serve.gradio_web_server.

Against the session's controller and tiny workers (serve_helpers), the test uploads an image, asks a question
at temperature 0 and reads the streamed answer from the page: it must be the CLI's greedy answer. Without
Chromium and chromedriver the test is skipped, or fails when VISATB_REQUIRE_BROWSER=1 (CI sets it).
VISATB_WEB_DEMO_SCREENSHOT=<png> also saves the page after the answer there (assets/web_demo.png).
"""

from __future__ import annotations

import json
import os
import re
import time
from urllib.parse import urlsplit

import pytest
import requests
from browser_helpers import chromium
from PIL import Image
from serve_helpers import MODEL_A, MODEL_B, stack
from train_helpers import free_port

from llava.generation import LlavaGenerator

# A browser drives the web server of a real controller and workers (processes started once per session).
pytestmark = [pytest.mark.slow, pytest.mark.e2e]

QUESTION = "What is in the image?"
MAX_NEW_TOKENS = 64  # a multiple of the slider's step (64, as upstream)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    yield from chromium(tmp_path_factory.mktemp("chromium-profile"))


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """The session's controller and workers plus a web server in front of them; yields (stack, url)."""
    served = stack(tmp_path_factory.getbasetemp() / "serve_stack")
    port = free_port()
    served.start("web", "llava.serve.gradio_web_server", "--controller-url", served.controller_url,
                 "--host", "127.0.0.1", "--port", str(port), "--model-list-mode", "reload")  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while True:
        if served.processes["web"].poll() is not None:
            pytest.fail(f"the web server exited:\n{served.log('web')}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.time() < deadline, f"the web server did not answer in 90 s:\n{served.log('web')}"
        time.sleep(0.3)
    yield served, url
    served.stop("web")


def _visible_text(text: str) -> str:
    # What a page shows of the tiny model's byte soup: no control or replacement characters, spaces collapsed.
    text = "".join(c for c in text if c.isprintable() or c.isspace()).replace("\ufffd", "")
    return re.sub(r"\s+", " ", text).strip()


def _set_number(driver, elem_id: str, value) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def test_upload_ask_and_read_the_streamed_answer(browser, web, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    served, url = web
    picture = Image.new("RGB", (64, 48), (235, 235, 235))
    picture.paste((200, 30, 30), (8, 8, 30, 30))
    picture.paste((30, 60, 200), (36, 20, 58, 42))
    picture_file = tmp_path / "shapes.png"
    picture.save(picture_file)
    generator = LlavaGenerator.from_pretrained(served.checkpoints[MODEL_A], conv_mode="llava_v1", device="cpu",
                                               verbose=False, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
    expected = generator.stream_chat(generator.new_conversation(), QUESTION, image=picture)

    browser.get(url)
    wait = WebDriverWait(browser, 60)
    model_box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#model_selector input"))
    wait.until(lambda d: model_box.get_attribute("value") == MODEL_A)  # the first of the controller's models
    browser.find_element(By.CSS_SELECTOR, "#image_input input[type=file]").send_keys(str(picture_file))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image_input img"))
    browser.find_element(By.XPATH, "//button[.//*[text()='Parameters'] or text()='Parameters']").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#temperature input[type=number]").is_displayed())
    _set_number(browser, "temperature", 0)
    _set_number(browser, "max_output_tokens", MAX_NEW_TOKENS)
    browser.find_element(By.CSS_SELECTOR, "#textbox textarea").send_keys(QUESTION)
    browser.find_element(By.CSS_SELECTOR, "#send_btn").click()

    def answer(driver) -> str:
        bots = driver.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='bot']")
        return bots[-1].text if bots else ""

    want = _visible_text(expected)
    assert len(want) > 10, f"the tiny model's answer {expected!r} shows too little text to compare"
    try:
        wait.until(lambda d: _visible_text(answer(d)) == want)
    except Exception:
        pytest.fail(f"the page shows {answer(browser)!r}, the CLI answered {expected!r}\n{served.log('web')}")
    user_turns = browser.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='user']")
    assert [u.text.strip() for u in user_turns] == [QUESTION]
    assert MODEL_B in served.workers  # both models behind the controller, the first one answered
    browser.save_screenshot(str(tmp_path / "web_demo.png"))
    if os.environ.get("VISATB_WEB_DEMO_SCREENSHOT"):
        browser.save_screenshot(os.environ["VISATB_WEB_DEMO_SCREENSHOT"])

    # Nothing the page loaded or sent went anywhere but the demo's own server (no CDN, fonts, analytics).
    requested = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.add(message["params"]["request"]["url"])
    web_requests = [u for u in requested if urlsplit(u).scheme in ("http", "https", "ws", "wss")]
    assert any(u.startswith(url) for u in web_requests)
    assert [u for u in web_requests if urlsplit(u).netloc != urlsplit(url).netloc] == []

    browser.find_element(By.CSS_SELECTOR, "#clear_btn").click()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='bot']"))
