"""The web page shows model output as text, never as markup: in headless Chromium, a scripted
model answers with Markdown full of injection attempts (`<img onerror>`, `<script>`, `<svg
onload>`, `javascript:` links, quotes in link addresses, HTML in code blocks and code spans,
emphasis markers inside link addresses). Each payload would set `window.xssRan`; the test checks
that it stays unset while the answer streams in and after a reload from the store, that the
message's DOM holds only the renderer's own tags, and that every link is the https link written."""

from __future__ import annotations

import pytest

from serving_helpers import ScriptedEngine, start_server

TIMEOUT_MS = 20_000

ANSWER = "\n".join(
    [
        "# Title <img src=x onerror=\"window.xssRan='heading'\">",
        "Plain <img src=x onerror=window.xssRan='img'> and <script>window.xssRan='script'</script>.",
        "<svg onload=window.xssRan='svg'></svg> <iframe src=\"javascript:window.xssRan='iframe'\"></iframe>",
        "<a href=\"javascript:window.xssRan='a'\" onclick=\"window.xssRan='a'\">raw anchor</a>",
        "[click me](javascript:window.xssRan='md-link') [data](data:text/html,<script>window.xssRan=1</script>)",
        "[quote](https://example.org/\"onmouseover=\"window.xssRan='quote') and **[bold link](https://example.org/b)**",
        "[<img src=x onerror=window.xssRan='label'>](https://example.org/label)",
        "[under](https://example.org/a_b_c) and [stars](https://example.org/x**y**) trailing_ text",
        "Inline `<img src=x onerror=window.xssRan='code-span'>` code.",
        "- item <b onmouseover=window.xssRan='li'>bold?</b>",
        "```html",
        "<img src=x onerror=window.xssRan='fence'>",
        "<script>window.xssRan='fence-script'</script>",
        "```",
        "```\" onmouseover=\"window.xssRan='lang'",
        "x",
        "```",
    ]
)

# The links the renderer may make: exactly these addresses, in a new tab, without an opener.
LINKS = {
    "https://example.org/\"onmouseover=\"window.xssRan='quote'",
    "https://example.org/b",
    "https://example.org/label",
    "https://example.org/a_b_c",
    "https://example.org/x**y**",
}

# Every element the renderer writes; anything else in a message came from the model.
# BUTTON: the page's own copy button on each code block, added after the sanitizer.
RENDERER_TAGS = {
    "P",
    "BR",
    "STRONG",
    "EM",
    "DEL",
    "CODE",
    "PRE",
    "SPAN",
    "A",
    "UL",
    "OL",
    "LI",
    "H3",
    "H4",
    "H5",
    "H6",
    "BLOCKQUOTE",
    "HR",
    "TABLE",
    "THEAD",
    "TBODY",
    "TR",
    "TH",
    "TD",
    "BUTTON",
}

DOM_REPORT = """(root) => {
  const els = [...root.querySelectorAll("*")];
  return {
    tags: [...new Set(els.map((e) => e.tagName))],
    handlers: els.flatMap((e) => [...e.attributes].filter((a) => a.name.startsWith("on")).map((a) => a.name)),
    links: els.filter((e) => e.tagName === "A").map((e) => ({href: e.getAttribute("href"),
                                                             target: e.getAttribute("target"),
                                                             rel: e.getAttribute("rel")})),
    text: root.textContent,
  };
}"""


@pytest.fixture(scope="module")
def hostile_server(loaded, tmp_path_factory):
    running, stop = start_server(
        loaded, engine=ScriptedEngine(loaded, ANSWER), data_dir=str(tmp_path_factory.mktemp("xss"))
    )
    yield running
    stop()


def check_message(page) -> None:
    body = page.locator(".message.assistant .body").first
    report = body.evaluate(DOM_REPORT)
    assert set(report["tags"]) <= RENDERER_TAGS, report["tags"]
    assert body.locator("button").count() == body.locator("pre").count()  # the copy buttons, no more
    assert report["handlers"] == []
    assert {link["href"] for link in report["links"]} == LINKS, report["links"]
    assert all(link["target"] == "_blank" and link["rel"] == "noopener noreferrer" for link in report["links"])
    # The payloads are shown as the text the model wrote, not dropped.
    for shown in (
        "<img src=x onerror=window.xssRan='img'>",
        "<script>window.xssRan='script'</script>",
        "[click me](javascript:window.xssRan='md-link')",
        "<script>window.xssRan='fence-script'</script>",
    ):
        assert shown in report["text"], shown
    for link in body.locator("a").all():
        link.hover()  # an onmouseover smuggled into an attribute would run now
    assert page.evaluate("window.xssRan") is None


def test_model_output_cannot_inject_markup_or_script(browser, hostile_server):
    page = browser.new_page()
    dialogs: list[str] = []
    errors: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(hostile_server.url + "/")
    page.fill("#message-input", "Show me some HTML.")
    page.click("#send")
    page.wait_for_selector(".message.assistant:not(.streaming) .thumb-up")  # streamed and saved
    check_message(page)

    page.reload()  # the saved answer, rendered again from the store
    page.wait_for_selector(".message.assistant .thumb-up")
    check_message(page)
    assert dialogs == [] and errors == []
