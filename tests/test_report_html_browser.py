"""The demo's report.html in headless Chromium: the score table renders, and the filter shows exactly the records
on which EW and VisATB answer differently, counted here from the answer files themselves.

The page is the one the demo's chain wrote (the session's `demo` fixture). VISATB_REPORT_HTML_WORK=<dir> points
the test at another finished toy chain's work directory instead (a copy: the test writes report.html into it
with the report command). VISATB_REPORT_HTML_SCREENSHOT=<png> saves the page with the filter on
(assets/report_html.png).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from browser_helpers import chromium

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# The elements under arguments[0] matching arguments[1] that the browser lays out (not display: none).
VISIBLE = "return Array.from(arguments[0].querySelectorAll(arguments[1])).filter(e => e.getClientRects().length > 0)"


@pytest.fixture(scope="module")
def work(request) -> Path:
    """A finished toy chain's work directory holding report.html."""
    other = os.environ.get("VISATB_REPORT_HTML_WORK")
    if not other:
        return Path(request.getfixturevalue("demo")["out"])
    work = Path(other)
    record = json.loads((work / "pipeline.json").read_text())
    metrics = ",".join(f"{t}={m}" for t, m in record["metrics"].items())
    command = [sys.executable, "-m", "llava.visatb.results.report", "--scores", str(work / "scores.json"),
               "--tasks", ",".join(record["metrics"]), "--metrics", metrics, "--weights", str(work / "weights.json"),
               "--plot", "heatmap.png", "--output", str(work / "report.md"), "--html", str(work / "report.html"),
               "--answers-dir", str(work / "answers"), "--image-folder", record["image_folder"],
               "--val-files", ",".join(f"{t}={p}" for t, p in record["val_files"].items())]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return work


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    yield from chromium(tmp_path_factory.mktemp("chromium-profile"))


def differing_ids(work: Path, a: str = "EW", b: str = "VisATB") -> dict[str, set[str]]:
    """Per task, the ids of the records whose answer text differs between the two models' answer files."""
    record = json.loads((work / "pipeline.json").read_text())
    out = {}
    for task, val_file in record["val_files"].items():
        prefix = Path(val_file).name.split(".json")[0].replace("_", "-") + "_"
        answers = []
        for model in (a, b):
            (path,) = (p for p in (work / "answers" / model).glob(prefix + "*.json") if "provenance" not in p.name)
            answers.append({str(r["id"]): r["conversations"][1]["generative_value"] for r in json.loads(path.read_text())})
        out[task] = {i for i in answers[0] if i in answers[1] and answers[0][i] != answers[1][i]}
    return out


def test_the_table_renders_and_the_filter_shows_the_differing_records(work, browser):
    from selenium.webdriver.common.by import By

    page = work / "report.html"
    browser.get(page.as_uri())
    body = browser.find_element(By.TAG_NAME, "body")
    table = browser.find_element(By.ID, "scores")
    assert table.is_displayed() and table.size["height"] > 40
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    scores = json.loads((work / "scores.json").read_text())
    assert len(rows) == len(scores)  # one row per model of scores.json
    md_rows = [ln for ln in (work / "report.md").read_text().splitlines() if ln.startswith("| EW |")]
    ew = next(r for r in rows if r.find_elements(By.TAG_NAME, "td")[0].text == "EW")
    assert [td.text for td in ew.find_elements(By.TAG_NAME, "td")] == [
        c.strip().strip("*") for c in md_rows[0].strip("|").split("|")
    ]
    assert browser.find_element(By.ID, "heatmap").get_property("naturalWidth") > 0
    assert browser.find_element(By.ID, "model-a").get_property("value") == "EW"
    assert browser.find_element(By.ID, "model-b").get_property("value") == "VisATB"

    expected = differing_ids(work)
    sections = browser.find_elements(By.CSS_SELECTOR, "section.task")
    assert sorted(s.get_attribute("data-task") for s in sections) == sorted(expected)
    embedded = {s.get_attribute("data-task"): {r.get_attribute("data-key") for r in s.find_elements(By.CLASS_NAME, "rec")}
                for s in sections}  # fmt: skip
    assert len(browser.execute_script(VISIBLE, body, ".rec")) == sum(len(v) for v in embedded.values())
    assert sum(len(v) for v in expected.values()) > 0, "EW and VisATB answer every record alike: nothing to filter"

    browser.find_element(By.ID, "only-differ").click()
    shown = 0
    for section in sections:
        task = section.get_attribute("data-task")
        visible = {e.get_attribute("data-key") for e in browser.execute_script(VISIBLE, section, ".rec")}
        assert visible == expected[task] & embedded[task], task
        assert expected[task] <= embedded[task] or len(embedded[task]) == int(section.get_attribute("data-total"))
        total = section.get_attribute("data-total")
        assert f"EW and VisATB differ on {len(expected[task])} of {total} record(s)" in section.text
        shown += len(visible)
    assert browser.find_element(By.ID, "shown-total").text == str(shown)
    for rec in browser.execute_script(VISIBLE, body, ".rec")[:20]:
        assert rec.find_element(By.CLASS_NAME, "differs").text == "differs"

    # nothing is fetched from the network: the page and its data: images only (chrome:// is the browser's own)
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    assert page.as_uri() in urls and any(u.startswith("data:image/") for u in urls)
    assert not [u for u in urls if not u.startswith(("file://", "data:", "chrome://"))]

    if os.environ.get("VISATB_REPORT_HTML_SCREENSHOT"):
        browser.execute_script("window.scrollTo(0, document.querySelector('section.task').offsetTop - 50)")
        browser.save_screenshot(os.environ["VISATB_REPORT_HTML_SCREENSHOT"])

    browser.find_element(By.ID, "only-differ").click()  # off again: every embedded record
    assert len(browser.execute_script(VISIBLE, body, ".rec")) == sum(len(v) for v in embedded.values())
