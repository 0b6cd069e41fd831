"""Tool calls out of generated text (every dialect), and tools for templates without them."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from llamita.tokenizer import Tokenizer, parse_tool_calls
from llamita.tokenizer.tool_calls import arguments_as_dict, with_dict_arguments
from llamita.tokenizer.tool_prompt import tools_as_text


def calls_of(text: str) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """(content, [(name, arguments as a dict)]), checking the OpenAI shape of every call."""
    content, calls = parse_tool_calls(text)
    out = []
    for call in calls:
        assert set(call) == {"id", "type", "function"} and call["type"] == "function"
        assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
        assert isinstance(call["function"]["arguments"], str)
        out.append((call["function"]["name"], json.loads(call["function"]["arguments"])))
    return content, out


MADRID = ("get_weather", {"city": "Madrid"})


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "parameters": {"city": "Madrid"}}',
        '{"name": "get_weather", "arguments": {"city": "Madrid"}}',
        '  {"type": "function", "name": "get_weather", "parameters": {"city": "Madrid"}}\n',
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Madrid"}}<|eom_id|>',
        '<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"city": "Madrid"}}',
        '{"name": "get_weather", "parameters": "{\\"city\\": \\"Madrid\\"}"}',  # stringified
        '<function=get_weather>{"city": "Madrid"}</function>',
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Madrid"}}</tool_call>',
        '<tool_call>\n[{"name": "get_weather", "arguments": {"city": "Madrid"}}]\n</tool_call>',
        '<tool_call>[{"name": "get_weather", "arguments": {"city": "Madrid"}}]',  # cut at the end
    ],
)
def test_one_call_in_every_dialect(text: str) -> None:
    assert calls_of(text) == ("", [MADRID])


def test_text_around_calls_is_content() -> None:
    assert calls_of('Let me check.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Madrid"}}') == (
        "Let me check.",
        [MADRID],
    )
    assert calls_of('Checking <function=get_weather>{"city": "Madrid"}</function> now') == ("Checking  now", [MADRID])
    assert calls_of(
        'Sure.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Madrid"}}'
        '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    ) == ("Sure.", [MADRID, ("get_time", {})])


def test_several_calls() -> None:
    text = (
        '<tool_call>[{"name": "get_weather", "arguments": {"city": "Madrid"}}, '
        '{"name": "get_weather", "arguments": {"city": "Lima"}}]</tool_call>'
    )
    assert calls_of(text)[1] == [MADRID, ("get_weather", {"city": "Lima"})]
    text = (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Madrid"}}; '
        '{"name": "get_time", "parameters": {}}'
    )
    assert calls_of(text)[1] == [MADRID, ("get_time", {})]
    _, calls = parse_tool_calls(text)
    assert calls[0]["id"] != calls[1]["id"]


def test_built_in_tools() -> None:
    assert calls_of('<|python_tag|>brave_search.call(query="latest price of gold")<|eom_id|>') == (
        "",
        [("brave_search", {"query": "latest price of gold"})],
    )
    assert calls_of('wolfram_alpha.call(query="solve x^2 = 4")') == (
        "",
        [("wolfram_alpha", {"query": "solve x^2 = 4"})],
    )
    # Without the tag only the known built-ins count: this is just text.
    assert calls_of('my_tool.call(query="x")') == ('my_tool.call(query="x")', [])


def test_code_interpreter() -> None:
    code = "import math\nprint(math.sqrt(2))"
    assert calls_of(f"<|python_tag|>{code}<|eom_id|>") == ("", [("code_interpreter", {"code": code})])
    # A call with non-literal arguments is code too; nothing is ever evaluated.
    assert calls_of('<|python_tag|>brave_search.call(query=__import__("os").getcwd())') == (
        "",
        [("code_interpreter", {"code": 'brave_search.call(query=__import__("os").getcwd())'})],
    )


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris.",
        '{"name": "Ana", "age": 30}',  # a JSON answer, not a call (no parameters/arguments)
        '{"name": "get_weather", "parameters": {"city": "Madrid"}',  # cut short
        '{"name": "get_weather", "parameters": [1, 2]}',
        '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',
        "<tool_call>not json at all</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',  # no name
        '<function=get_weather>{"city": Madrid}</function>',
        '<function=get_weather>["Madrid"]</function>',
        "[1, 2, 3]",
        "{" * 5000,
        "",
    ],
)
def test_invalid_calls_stay_content(text: str) -> None:
    assert parse_tool_calls(text) == (text, [])


def test_bad_block_stays_beside_a_good_one() -> None:
    text = (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Madrid"}}</tool_call><tool_call>{oops}</tool_call>'
    )
    assert calls_of(text) == ("<tool_call>{oops}</tool_call>", [MADRID])


def test_bare_python_tag_is_dropped() -> None:
    assert parse_tool_calls("Hi<|python_tag|>  ") == ("Hi  ", [])


def test_unicode_arguments_are_kept() -> None:
    _, calls = parse_tool_calls('{"name": "buscar", "parameters": {"q": "año ñandú"}}')
    assert calls[0]["function"]["arguments"] == '{"q": "año ñandú"}'


def test_arguments_as_dict() -> None:
    assert arguments_as_dict('{"a": 1}') == {"a": 1}
    assert arguments_as_dict({"a": 1}) == {"a": 1}
    assert arguments_as_dict("[1]") == "[1]" and arguments_as_dict("oops") == "oops"
    messages = [
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
        }
    ]
    before = copy.deepcopy(messages)
    assert with_dict_arguments(messages)[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert messages == before


# ---------------------------------------------------------------- templates without tools

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Madrid?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Madrid"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": {"temperature_c": 31}},
]


def test_tools_as_text() -> None:
    before = copy.deepcopy(HISTORY)
    out = tools_as_text(HISTORY, [TOOL])
    assert HISTORY == before
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert all(isinstance(m["content"], str) and "tool_calls" not in m for m in out)
    assert out[0]["content"].endswith("\n\nBe brief.")
    assert "<tools>" + json.dumps([TOOL]) + "</tools>" in out[0]["content"]
    assert out[2]["content"] == '<tool_call>[{"name": "get_weather", "arguments": {"city": "Madrid"}}]</tool_call>'
    assert out[3]["content"] == '<tool_response>\n{"temperature_c": 31}\n</tool_response>'
    # What the model is asked to write parses back into the same call.
    assert calls_of(out[2]["content"]) == ("", [MADRID])
    assert tools_as_text(HISTORY[1:2], None) == HISTORY[1:2]


def test_smollm_chat_with_tools(smollm_tok: Tokenizer) -> None:
    # SmolLM2's template ignores `tools`: they reach the model through the system message.
    assert smollm_tok.chat_template is not None and not smollm_tok.chat_template.uses("tools")
    ids = smollm_tok.encode_chat(HISTORY, tools=[TOOL])
    text = smollm_tok.decode(ids)
    assert text.startswith("<|im_start|>system\nYou can call functions")
    assert "<tool_response>" in text and text.endswith("<|im_start|>assistant\n")
    assert ids.count(1) == 5  # <|im_start|>: system, user, assistant, user (result), prompt
    assert smollm_tok.encode_chat(HISTORY[1:2]) == smollm_tok.encode_chat(HISTORY[1:2], tools=None)


def test_template_with_tools_gets_them(llama3_tok: Tokenizer) -> None:
    assert llama3_tok.chat_template is not None and llama3_tok.chat_template.uses("tools")
    text = llama3_tok.decode(llama3_tok.encode_chat(HISTORY, tools=[TOOL]))
    assert '"name": "get_weather"' in text and "<tool_call>" not in text
