"""The web page's Documents panel in a real browser (headless Chromium + Playwright; skipped
without them): drop files to make a collection (a broken PDF reported by name), ask with it
attached, see the citation [1] show its chunk, and the attention to each source drawn in the
"Inside the model" panel. The engine answers a fixed script that cites [1]; retrieval and the
glass view run the real default model."""

from __future__ import annotations

import pytest

from rag_documents import pdf_bytes
from serving_helpers import RecordingEngine, start_server

TIMEOUT_MS = 60_000
PERROS = "# Perros\n\nEl perro de Ana se llama Tobi y tiene tres años."
SCRIPT = "Se llama Tobi [1]."


@pytest.fixture(scope="module")
def docs_server(loaded, tmp_path_factory):
    engine = RecordingEngine(loaded, SCRIPT)
    running, stop = start_server(loaded, engine=engine, data_dir=str(tmp_path_factory.mktemp("docs")))
    running.engine = engine
    yield running
    stop()


def drop(page, files: list[tuple[str, str, bytes]]) -> None:
    """Drops files on the drop zone as a browser does: a drop event carrying a DataTransfer."""
    transfer = page.evaluate_handle(
        """(files) => {
        const dt = new DataTransfer();
        for (const [name, type, bytes] of files) dt.items.add(new File([new Uint8Array(bytes)], name, { type }));
        return dt;
    }""",
        [[name, kind, list(data)] for name, kind, data in files],
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})


def test_drop_attach_ask_and_see_the_citation(browser, docs_server, loaded):
    page = browser.new_page(locale="en-US")
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(docs_server.url + "/")
    page.wait_for_selector("#collection-list li.empty")

    page.fill("#collection-name", "mascotas")
    broken = pdf_bytes(["never read"])[:60] + b"\x00garbage" * 10
    drop(page, [("perros.md", "text/markdown", PERROS.encode()), ("roto.pdf", "application/pdf", broken)])
    page.wait_for_selector("#upload-status li.failed")
    page.wait_for_selector("#collection-list li[data-name='mascotas'] input:checked")  # attached
    lines = page.locator("#upload-status li").all_inner_texts()
    assert lines[0] == "perros.md: 1 chunks"
    assert lines[1].startswith("roto.pdf: not read:")
    assert "1 files · 1 chunks" in page.locator("#collection-list li[data-name='mascotas']").inner_text()

    page.fill("#message-input", "¿Cómo se llama el perro de Ana?")
    page.click("#send")
    cite = page.locator(".message.assistant a.cite")
    cite.wait_for()
    assert cite.inner_text() == "1"
    prompt = loaded.tokenizer.decode(docs_server.engine.prompts[-1])
    assert "[1] (perros.md, Perros)\n" + PERROS in prompt  # what [1] was when the model read it
    cite.hover()
    popup = page.locator("#cite-popup")
    popup.wait_for(state="visible")
    assert "perros.md" in popup.inner_text() and "se llama Tobi" in popup.inner_text()
    page.hover("#message-input")  # the pointer leaves: the chunk goes
    popup.wait_for(state="hidden")

    page.locator(".message.assistant .source-attention").click()
    page.wait_for_selector("#glass[open] #glass-sources li")
    assert page.locator("#glass-sources li").count() == 1
    assert "[1] perros.md" in page.locator("#glass-sources li").inner_text()
    assert "% of the answer's attention went to the sources" in page.locator("#glass-sources-summary").inner_text()
    assert "".join(page.locator("#glass-answer .piece").all_text_contents()) == SCRIPT
    shares = page.locator("#glass-sources li .prob").inner_text()

    page.reload()  # the answer keeps its sources (the chat store): the citation still shows its chunk
    page.locator(".message.assistant a.cite").click()
    page.locator("#cite-popup").wait_for(state="visible")
    assert "se llama Tobi" in page.locator("#cite-popup").inner_text()
    page.locator(".message.assistant .source-attention").click()
    page.wait_for_function("document.querySelector('#glass-sources li .prob')?.textContent === " + repr(shares))
    assert errors == []
