"""The web chat's actions in headless Chromium, over a scripted model (the same answer every
time): copy buttons, no empty bubble after an error, dark mode, regenerate, edit-and-resend,
the favicon, a fresh visit, search over titles, and a session without console errors."""

from __future__ import annotations

import json

import pytest

from serving_helpers import ScriptedEngine, start_server

TIMEOUT_MS = 20_000
CODE = 'print("hola")'
ANSWER = f"Here:\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\n{CODE}\n```\n\nDone."
SAVED = ".message.assistant:not(.streaming) .thumb-up"  # an answer streamed and stored


@pytest.fixture(scope="module")
def scripted_server(loaded, tmp_path_factory):
    running, stop = start_server(
        loaded, engine=ScriptedEngine(loaded, ANSWER), data_dir=str(tmp_path_factory.mktemp("actions"))
    )
    yield running
    stop()


@pytest.fixture
def context(browser):
    context = browser.new_context(locale="en-US", permissions=["clipboard-read", "clipboard-write"])
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


def open_new_conversation(page, url: str) -> None:
    """The page with an empty conversation (a fresh visit opens the latest one)."""
    page.goto(url + "/")
    page.wait_for_load_state("networkidle")
    page.click("#new-conversation")


def ask(page, text: str, n_answers: int) -> None:
    page.fill("#message-input", text)
    page.click("#send")
    page.wait_for_function(f"document.querySelectorAll('{SAVED}').length === {n_answers}")


def stored(page) -> list[tuple[str, str]]:
    """The open conversation as the server keeps it: (role, content) per message."""
    data = page.evaluate("""async () => (await (await fetch('/ui/conversations/'
        + localStorage.getItem('llamita.conversation'))).json()).messages""")
    return [(m["role"], m["content"]) for m in data]


def shown(page) -> list[tuple[str, str]]:
    return [
        ("user" if "user" in cls else "assistant", text)
        for cls, text in page.locator(".message").evaluate_all(
            "els => els.map(e => [e.className, e.classList.contains('user') ? e.querySelector('.body').textContent : ''])"
        )
    ]


def test_answer_table_and_copy_buttons(context, scripted_server):
    page = context.new_page()
    open_new_conversation(page, scripted_server.url)
    ask(page, "A table, please.", 1)
    answer = page.locator(".message.assistant")
    assert answer.locator(".body table td").all_inner_texts() == ["1", "2"]
    answer.locator(".meta .copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == ANSWER
    assert answer.locator(".meta .copy").inner_text() == "Copied"
    answer.locator("pre .copy-code").click()
    assert page.evaluate("navigator.clipboard.readText()") == CODE


def test_error_leaves_no_empty_answer(context, scripted_server):
    page = context.new_page()
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=503, content_type="application/json", body=json.dumps({"error": {"message": "the queue is full"}})
        ),
    )
    open_new_conversation(page, scripted_server.url)
    page.fill("#message-input", "Hello?")
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])")
    assert page.locator("#error").inner_text() == "the queue is full"
    page.wait_for_function("!document.getElementById('send').disabled")
    assert page.locator(".message.user").count() == 1
    assert page.locator(".message.assistant").count() == 0


def background(page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


def test_dark_mode_follows_the_system_and_the_toggle(browser, scripted_server):
    dark = browser.new_context(color_scheme="dark")
    page = dark.new_page()
    page.goto(scripted_server.url + "/")
    assert background(page) == "rgb(23, 24, 27)"
    page.click("#theme")
    assert background(page) == "rgb(250, 250, 247)"
    page.reload()  # the choice is remembered over the system's
    assert background(page) == "rgb(250, 250, 247)"
    dark.close()
    light = browser.new_context(color_scheme="light")
    page = light.new_page()
    page.goto(scripted_server.url + "/")
    assert background(page) == "rgb(250, 250, 247)"
    page.click("#theme")
    assert background(page) == "rgb(23, 24, 27)"
    assert page.evaluate("getComputedStyle(document.querySelector('#message-input')).colorScheme") == "dark"
    light.close()


def test_regenerate_and_edit_and_resend(context, scripted_server):
    page = context.new_page()
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if r.url.endswith("/v1/chat/completions") else None)
    open_new_conversation(page, scripted_server.url)
    ask(page, "first question", 1)
    assert page.locator(".message.user .regenerate").count() == 0
    page.locator(".message.assistant").evaluate("el => { el.dataset.old = 'yes'; }")  # ids may be reused

    page.locator(".message.assistant .regenerate").click()
    page.wait_for_function(f"""(() => {{ const saved = document.querySelector('{SAVED}');
        return saved !== null && saved.closest('.message').dataset.old === undefined; }})()""")
    assert len(asked) == 2 and page.locator(".message.assistant").count() == 1
    assert stored(page) == [("user", "first question"), ("assistant", ANSWER)]
    ask(page, "second question", 2)
    # Only the last answer offers to regenerate.
    assert [b.is_visible() for b in page.locator(".message.assistant .regenerate").all()] == [False, True]

    page.locator(".message.user .edit").first.click()
    page.keyboard.press("Escape")  # gives up: nothing changes
    assert page.locator(".edit-text").count() == 0 and len(shown(page)) == 4
    page.locator(".message.user .edit").first.click()
    page.fill(".message.user .edit-text", "first question, edited")
    page.click(".message.user .resend")
    page.wait_for_function(f"document.querySelectorAll('.message').length === 2 && document.querySelector('{SAVED}')")
    expected = [("user", "first question, edited"), ("assistant", ANSWER)]
    assert stored(page) == expected and len(asked) == 4
    assert shown(page) == [("user", "first question, edited"), ("assistant", "")]
    page.reload()
    page.wait_for_selector(SAVED)
    assert shown(page) == [("user", "first question, edited"), ("assistant", "")]


def test_session_favicon_fresh_visit_and_search(browser, scripted_server):
    titles = ["Receta de pan", "Canción de cuna", "Llamas in the Andes"]
    for title in titles:  # the last one made is the latest
        r = browser.new_context().request.post(scripted_server.url + "/ui/conversations", data={"title": title})
        assert r.status == 201
    context = browser.new_context(locale="en-US")  # a fresh visit: nothing in localStorage
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(scripted_server.url + "/")
    page.wait_for_selector("#conversation-list li.active")
    assert page.locator("#conversation-list li.active .title").inner_text() == "Llamas in the Andes"
    icon = page.evaluate("fetch(document.querySelector('link[rel=icon]').href).then(r => r.status)")
    assert icon == 200 and page.evaluate("fetch('/favicon.ico').then(r => r.status)") == 200

    page.fill("#conversation-search", "cancion")  # case and accents do not matter
    assert page.locator("#conversation-list li .title").all_inner_texts() == ["Canción de cuna"]
    page.fill("#conversation-search", "")
    assert page.locator("#conversation-list li").count() >= len(titles)
    ask(page, "Tell me about llamas.", 1)
    page.click("#new-conversation")
    page.reload()  # a conversation chosen as new stays new
    page.wait_for_selector("#conversation-list li")
    assert page.locator(".message").count() == 0
    assert problems == []
    context.close()


def test_model_picker_always_says_what_answers(context, scripted_server):
    # One model, nothing to choose, and still the picker names it with its parameters,
    # quantization, size and context window, as /api/ps reports them.
    ps = json.loads(context.request.get(scripted_server.url + "/api/ps").text())["models"][0]
    page = context.new_page()
    page.goto(scripted_server.url + "/")
    page.wait_for_load_state("networkidle")
    assert page.locator("#model-choice").is_visible()
    assert page.locator("#model option").all_inner_texts() == [ps["name"]]
    facts = page.inner_text("#model-facts")
    assert ps["details"]["quantization_level"] in facts and ps["details"]["parameter_size"] in facts
    assert f"{ps['context_length']:,}" in facts and f"{ps['size'] / 1e6:.0f} MB" in facts
    page.click("#lang")  # the same facts in Spanish
    assert "contexto de" in page.inner_text("#model-facts")
