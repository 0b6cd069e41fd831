"""The web page's model list over a library server: library models are offered, the loaded
ones marked, and choosing one loads it (headless Chromium; skips without it)."""

from __future__ import annotations

import pytest
from test_model_pool import Server, files, library  # noqa: F401  (fixtures)

from serving_helpers import MODEL_NAME

TIMEOUT_MS = 30_000


@pytest.fixture
def server(library, files) -> Server:  # noqa: F811
    s = Server(files)
    yield s
    s.stop()


def test_the_picker_lists_the_library_and_choosing_loads(browser, server):
    context = browser.new_context(locale="en-US")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(server.url + "/")
    page.wait_for_load_state("networkidle")
    labels = page.locator("#model option").all_inner_texts()
    assert f"{MODEL_NAME} ● loaded" in labels and "tiny-a" in labels and "tiny-b" in labels
    page.select_option("#model", "tiny-a")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#model option')].some((o) => o.textContent === 'tiny-a ● loaded')"
    )
    assert "tiny-a" in server.loaded() and "tiny-b" not in server.loaded()
    assert page.eval_on_selector("#model", "s => s.value") == "tiny-a"
    assert "128-token context" in page.inner_text("#model-facts")  # its KV cache bounds the window
    context.close()
