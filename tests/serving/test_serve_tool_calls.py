"""Tool calls come back parsed (OpenAI message.tool_calls, Ollama message.tool_calls), whole or
streamed as OpenAI deltas (id and name first, then the arguments piece by piece). The model
here is scripted: an engine that writes a fixed tool call with the real tokenizer, so the test
does not depend on what SmolLM2 decides."""

from __future__ import annotations

import json

import ollama
import openai
import pytest

from serving_helpers import MODEL_NAME, ScriptedEngine, start_server

CALL_TEXT = '<tool_call>{"name": "get_weather", "arguments": {"city": "Madrid"}}</tool_call>'
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
ASK = [{"role": "user", "content": "What is the weather in Madrid?"}]


@pytest.fixture(scope="module")
def scripted(loaded):
    running, stop = start_server(loaded, engine=ScriptedEngine(loaded, "Let me check. " + CALL_TEXT))
    yield running
    stop()


def test_openai_tool_calls(scripted):
    client = openai.OpenAI(base_url=scripted.url + "/v1", api_key="x", timeout=30, max_retries=0)
    r = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Madrid"}

    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    pieces = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert len(pieces) > 3  # the arguments arrive as they are written, not in one piece
    first = pieces[0]
    assert first.index == 0 and first.id.startswith("call_") and first.function.name == "get_weather"
    assert all(p.index == 0 and p.id is None for p in pieces[1:])
    assert json.loads("".join(p.function.arguments for p in pieces)) == {"city": "Madrid"}
    assert "".join(d.content or "" for d in deltas).strip() == "Let me check."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # tool_choice "none": the tools are not offered, and the text is not parsed.
    plain = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice="none")
    assert plain.choices[0].finish_reason == "stop" and "<tool_call>" in plain.choices[0].message.content


def test_ollama_tool_calls(scripted):
    client = ollama.Client(host=scripted.url, timeout=30)
    r = client.chat(model=MODEL_NAME, messages=ASK, tools=TOOLS)
    (call,) = r.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Madrid"}
    parts = list(client.chat(model=MODEL_NAME, messages=ASK, tools=TOOLS, stream=True))
    assert len(parts) == 1 and parts[0].done and parts[0].message.tool_calls[0].function.name == "get_weather"
