"""Headless Chromium for the browser tests (Debian's chromium and chromium-driver, driven through selenium).

Without them a browser test is skipped, or fails when VISATB_REQUIRE_BROWSER=1 (CI sets it, .ci/run installs
both packages).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,860",
]  # fmt: skip


def browser_paths() -> tuple[str, str] | str:
    """(chromium, chromedriver), or why they cannot be used."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    if not chromium or not driver:
        return "Chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)"
    return chromium, driver


def chromium(profile: Path) -> Iterator:
    """A headless Chromium driver (its network requests in the performance log) for a fixture to yield."""
    found = browser_paths()
    if isinstance(found, str):
        if os.environ.get("VISATB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"VISATB_REQUIRE_BROWSER=1 but {found}")
        pytest.skip(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # the page's network requests
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
