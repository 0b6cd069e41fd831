"""Streamed tool calls against the whole-answer parser (tool_calls.parse_tool_calls): for every
dialect and every way of cutting the text into pieces, the streamed content and calls add up
to what the parser finds in the finished text, and JSON calls start before they end."""

from __future__ import annotations

import json

import pytest

from llamita.tokenizer.tool_call_stream import ToolCallStream
from llamita.tokenizer.tool_calls import parse_tool_calls

ANSWERS = [
    '{"name": "get_weather", "parameters": {"city": "Madrid", "when": {"day": "} tricky {"}}}',
    '<tool_call>[{"name": "a", "arguments": {"q": 1}}, {"arguments": {"z": [1, {"y": 2}]}, "name": "b"}]</tool_call>',
    'Let me check. <tool_call>{"name": "a", "arguments": {"q": "x\\"y"}}</tool_call>',
    '<tool_call>{"name": "caf\\u00e9", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {"k": null}}</tool_call>',
    '<function=foo>{"a": 1}</function>',
    'brave_search.call(query="madrid")',
    "Plain answer, no call at all: a < b and [brackets] and {braces}.",
    "[1, 2, 3] is a list, not a call",
    '{"name": "Ana", "age": 3}',  # JSON without arguments: content, not a call
    "   \n",
]


def stream(text: str, size: int) -> tuple[str, list[tuple[str, str]], int]:
    """Feed `text` in pieces of `size` characters; (content, [(name, arguments)], number of
    feeds after which the first call had begun)."""
    st = ToolCallStream()
    content, calls, first_call_at = "", {}, -1

    def take(deltas, step):
        nonlocal first_call_at
        for d in deltas:
            if d.id is not None:
                assert d.index == len(calls) and d.id.startswith("call_")
                calls[d.index] = [d.name, ""]
                first_call_at = step if first_call_at < 0 else first_call_at
            calls[d.index][1] += d.arguments

    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    for step, piece in enumerate(pieces):
        c, deltas = st.feed(piece)
        content += c
        take(deltas, step)
    c, deltas = st.finish(*parse_tool_calls(text))
    content += c
    take(deltas, len(pieces))
    return content, [tuple(v) for v in calls.values()], first_call_at


@pytest.mark.parametrize("text", ANSWERS)
@pytest.mark.parametrize("size", [1, 2, 3, 7, 10_000])
def test_stream_adds_up_to_the_whole_answer_parse(text, size):
    content, calls, _ = stream(text, size)
    want_content, want_calls = parse_tool_calls(text)
    assert [(n, json.loads(a)) for n, a in calls] == [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in want_calls
    ]
    if want_calls:
        assert content.strip() == want_content
    else:
        assert content == text


@pytest.mark.parametrize("text", ANSWERS[:4])
def test_json_calls_begin_before_the_answer_ends(text):
    _, calls, first_call_at = stream(text, 1)
    assert calls and 0 <= first_call_at < len(text) - 5


def test_llama_calls_after_python_tag_and_semicolon():
    """Llama 3.2 writes `{...}; {...}` (the parser needs <|python_tag|> for that); streamed
    calls stand, the content is empty."""
    st = ToolCallStream()
    text = '{"name": "a", "parameters": {"q": 1}}; {"name": "b", "parameters": {}}'
    names = []
    for ch in text:
        _, deltas = st.feed(ch)
        names += [d.name for d in deltas if d.id]
    content, more = st.finish(*parse_tool_calls(text))
    assert names == ["a", "b"] and not more and content == ""
    # After <|python_tag|> a non-JSON body (built-in call or code) waits for the end.
    st = ToolCallStream()
    assert st.feed("", python_tag=True) == ("", [])
    assert st.feed("print(1)") == ("", [])
    assert st.finish(*parse_tool_calls("<|python_tag|>print(1)"))[1][0].name == "code_interpreter"
