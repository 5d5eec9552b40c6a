"""Fixtures for the browser tests: Debian's Chromium driven by Selenium through the system chromedriver.

Nothing is downloaded: the browser and its driver come from the ``chromium`` and
``chromium-driver`` packages (``make e2e-deps`` installs them and the ``selenium`` package).
Without them these tests are skipped, loudly, except when ``CI=true``: there they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() == "true"

#: the flags the browser runs with: headless, and no traffic of its own to anywhere
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    "--window-size=1400,1000", "--lang=en-US",
]


def _missing(what: str) -> None:
    reason = f"!!! browser tests need {what}: run `make e2e-deps` !!!"
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def _find(env: str, *names: str) -> str | None:
    explicit = os.environ.get(env)
    if explicit:
        return explicit
    for name in names:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session (Selenium ``WebDriver``)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("the selenium package")
    binary = _find("CHROMIUM_BIN", "chromium", "/usr/bin/chromium", "chromium-browser")
    driver_path = _find("CHROMEDRIVER_BIN", "chromedriver", "/usr/bin/chromedriver")
    if binary is None:
        _missing("Debian's chromium package")
    if driver_path is None:
        _missing("Debian's chromium-driver package")
    options = Options()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    # an explicit driver path: Selenium Manager is never asked to download anything
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
