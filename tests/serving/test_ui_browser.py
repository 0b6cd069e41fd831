"""The web chat in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.
Send a message, watch the answer stream in, give it a thumbs up, reload, find it all again."""

from __future__ import annotations

import pytest

from serving_helpers import start_server

TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def chat_server(loaded, tmp_path_factory):
    running, stop = start_server(loaded, kv_cache_tokens=1024, data_dir=str(tmp_path_factory.mktemp("chat")))
    yield running
    stop()


def test_chat_stream_feedback_and_reload(browser, chat_server):
    page = browser.new_page(locale="es-ES")
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(chat_server.url + "/")
    assert page.locator("#send").inner_text() == "Enviar"  # Spanish, from navigator.language

    page.select_option("#preset", "preciso")
    assert page.input_value("#temperature") == "0.1" and page.input_value("#top_k") == "40"
    page.fill("#max_tokens", "24")
    page.fill("#system-prompt", "Answer in one short sentence.")
    page.fill("#message-input", "What is the capital of France?")
    page.click("#send")

    answer = page.locator(".message.assistant").first
    page.wait_for_selector(".message.assistant .body:not(:empty)")  # text arrives while streaming
    page.wait_for_selector(".message.assistant:not(.streaming) .thumb-up")  # saved, with its id
    text = answer.locator(".body").inner_text()
    assert text.strip()
    assert "tokens/s" in answer.locator(".speed").inner_text()
    answer.locator(".thumb-up").click()
    page.wait_for_selector(".message.assistant .thumb-up.chosen")

    page.reload()
    page.wait_for_selector("#conversation-list li.active")
    assert "capital of France" in page.locator("#conversation-list li").first.inner_text()
    page.wait_for_selector(".message.assistant .thumb-up.chosen")
    assert page.locator(".message.user .body").inner_text() == "What is the capital of France?"
    assert page.locator(".message.assistant .body").inner_text() == text
    assert page.input_value("#system-prompt") == "Answer in one short sentence."
    assert page.input_value("#preset") == "preciso" and page.input_value("#max_tokens") == "24"

    # Stop a long answer early: what came so far stays, marked as stopped, and is saved.
    page.fill("#max_tokens", "400")
    page.fill("#message-input", "Tell me a long story about a llama.")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.message.assistant .body')[1]?.textContent.length > 10")
    page.click("#stop")
    stopped = page.locator(".message.assistant").nth(1)
    page.wait_for_selector(".message.assistant >> nth=1 >> .thumb-up")
    assert "detenida" in stopped.locator(".meta").inner_text()
    assert page.is_enabled("#send") and not page.is_enabled("#stop")

    page.click("#lang")  # and back to English
    assert page.locator("#send").inner_text() == "Send"
    assert errors == []


def test_markdown_renders_without_injecting_markup(browser, chat_server):
    page = browser.new_page()
    page.goto(chat_server.url + "/")
    page.wait_for_function("typeof renderMarkdown === 'function'")
    html = page.evaluate("""renderMarkdown('**b** *i* `<x>`\\n\\n- a\\n- b\\n\\n```js\\nlet s = "q";\\n```\\n'
                                           + '<img src=x onerror=alert(1)> [l](https://e.org) [j](javascript:alert(1))')""")
    assert "<strong>b</strong>" in html and "<em>i</em>" in html and "<code>&lt;x&gt;</code>" in html
    assert "<li>a</li>" in html and "<li>b</li>" in html and 'class="language-js"' in html
    assert "<img" not in html and "&lt;img" in html
    assert '<a href="https://e.org"' in html and "javascript:" not in html.split("<a ")[-1].split(">")[0]


def test_markdown_tables_quotes_and_nested_lists(browser, chat_server):
    """What the hand-written renderer left as raw text: GFM tables, blockquotes, nested lists."""
    page = browser.new_page()
    page.goto(chat_server.url + "/")
    page.wait_for_function("typeof renderMarkdown === 'function'")
    page.evaluate("""document.body.append(Object.assign(document.createElement('div'), {className: 'md'}));
        document.querySelector('.md').innerHTML = renderMarkdown(
          '| name | size |\\n|:--|--:|\\n| a | 1 |\\n| b | 22 |\\n\\n> quoted **text**\\n\\n'
          + '- outer\\n  - inner\\n    1. deep\\n- last\\n\\n~~gone~~')""")
    md = page.locator(".md")
    assert md.locator("table thead th").all_inner_texts() == ["name", "size"]
    assert md.locator("table tbody tr").count() == 2
    assert md.locator("table tbody tr").nth(1).locator("td").all_inner_texts() == ["b", "22"]
    assert md.locator("blockquote strong").inner_text() == "text"
    assert md.locator("ul > li > ul > li > ol > li").inner_text() == "deep"
    assert md.locator("del").inner_text() == "gone"
    page.close()
