"""Headless Chromium for the review page's browser tests: Debian's chromium driven by Playwright.

Playwright's own browser builds are never downloaded (``playwright install`` needs the internet, and the
tests never download anything); instead the fixture drives the system ``chromium`` package through
``executable_path``. Playwright's bundled node driver runs offline, so nothing else is needed.

Use it from a test module (the project's pattern for shared fixtures, see tests/daemon/test_outages.py)::

    from tests.web.browser import chromium_page, save_screenshot  # noqa: F401  (a fixture)

    def test_x(chromium_page: Page, tmp_path: Path) -> None:  # noqa: F811
        chromium_page.goto(url)
        save_screenshot(chromium_page, "review-queue", tmp_path)

A missing chromium skips on a developer machine (with the apt command to fix it) but fails under CI:
``make test`` installs the package, so a skip there would silently drop the page from the test run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, sync_playwright

CHROMIUM = "chromium"
APT_HINT = "apt-get install chromium"
SCREENSHOTS_ENV = "LINEWATCH_SCREENSHOTS"

# The launch is ~0.3 s on 2 cores; 30 s only trips on a browser that cannot start (missing libraries,
# a broken profile), and then the test fails with chromium's own log instead of hanging.
LAUNCH_TIMEOUT_MS = 30_000
# Playwright waits 30 s per action by default; against a loopback server a missing element is a bug, and
# failing after 10 s keeps a broken page from costing minutes of CI time across several steps.
ACTION_TIMEOUT_MS = 10_000
VIEWPORT = {"width": 1280, "height": 800}

# --no-sandbox: CI runs as root, where chromium refuses to start sandboxed. --disable-gpu: no GPU in CI.
# --disable-dev-shm-usage: containers often mount a 64 MB /dev/shm, on which chromium crashes mid-render.
# The rest keep a test browser from reaching out to Google's services (there is no network to reach).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_executable() -> str:
    """The system chromium on the PATH; skips (locally) or fails (under CI) when it is not installed."""
    executable = shutil.which(CHROMIUM)
    if executable is not None:
        return executable
    message = f"{CHROMIUM!r} not found on the PATH; install Debian's browser: {APT_HINT} (make test does this)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}. CI must run the browser tests, so this is a failure, not a skip.")
    pytest.skip(message)


@pytest.fixture
def chromium_page(tmp_path: Path) -> Iterator[Page]:
    """A page in a fresh headless chromium with an empty profile under tmp_path, closed after the test.

    A persistent context on tmp_path (rather than ``launch``'s own temp profile) keeps the profile with
    the test's other files and out of /tmp; closing it stops the whole browser, so no chromium outlives
    the test even when the test fails.
    """
    executable = chromium_executable()
    with sync_playwright() as playwright:
        try:
            context = playwright.chromium.launch_persistent_context(
                tmp_path / "chromium-profile",
                executable_path=executable,
                headless=True,
                args=CHROMIUM_ARGS,
                timeout=LAUNCH_TIMEOUT_MS,
                viewport=VIEWPORT,
            )
        except PlaywrightError as error:
            pytest.fail(f"{executable} did not launch (limit {LAUNCH_TIMEOUT_MS // 1000} s): {error}")
        try:
            context.set_default_timeout(ACTION_TIMEOUT_MS)
            # A persistent context opens with one blank page already.
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()


def save_screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    """Write a full-page PNG of ``page`` as ``<name>.png`` and return its path.

    The folder is $LINEWATCH_SCREENSHOTS when set, so CI can keep the pictures as build artifacts; else the
    test's tmp_path, where pytest keeps the last few runs for a look after a local failure.
    """
    folder = Path(os.environ[SCREENSHOTS_ENV]) if os.environ.get(SCREENSHOTS_ENV) else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path
