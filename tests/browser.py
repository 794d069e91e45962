"""Headless Chromium for the web-page tests (Debian ``chromium`` + ``chromium-driver``).

``make test`` installs both packages when they are missing; a test that needs the browser
fails with a clear message instead of being skipped when they are not there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

SCREENSHOT_DIR = Path(os.environ.get("HITSTREAM_SCREENSHOTS", "test-output/screenshots"))


def _find(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(
        f"none of {names} found: install the Debian packages chromium and chromium-driver "
        "(`make browser` does it)"
    )


@pytest.fixture
def browser() -> Iterator[object]:
    """A headless Chromium WebDriver, closed after the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.binary_location = _find("chromium", "chromium-browser", "google-chrome")
    driver = webdriver.Chrome(
        options=options, service=Service(_find("chromedriver", "chromium.chromedriver"))
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: object, name: str) -> Path:
    """Save a PNG of the page under the test-output folder and return its path."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    return path
