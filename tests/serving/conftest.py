"""Fixtures: a real llamita server over the default model, shared by the serving tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from serving_helpers import RunningServer, start_server


@pytest.fixture(scope="package")
def loaded(llm_f32):
    """The default model in float32, shared with `llm_f32` (the static-cache reference path)."""
    return llm_f32.loaded


@pytest.fixture(scope="package")
def server(loaded) -> Iterator[RunningServer]:
    running, stop = start_server(loaded)
    yield running
    stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's `chromium`) driven by Playwright, for the web page's tests;
    they skip where either is missing. One per module: while Playwright's sync API is open it
    keeps an event loop running in the main thread, and asyncio.run fails in any later test."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()
