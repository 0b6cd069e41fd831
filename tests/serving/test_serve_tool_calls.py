"""Tool calls come back parsed (OpenAI message.tool_calls, Ollama message.tool_calls), whole or
streamed as OpenAI deltas (id and name first, then the arguments piece by piece). The model
here is scripted: an engine that writes a fixed tool call with the real tokenizer, so the test
does not depend on what SmolLM2 decides."""

from __future__ import annotations

import json
from types import SimpleNamespace

import ollama
import openai
import pytest

from llamita.engine.llm_engine import EngineStats, RequestOutput
from serving_helpers import MODEL_NAME, start_server

CALL_TEXT = '<tool_call>{"name": "get_weather", "arguments": {"city": "Madrid"}}</tool_call>'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
ASK = [{"role": "user", "content": "What is the weather in Madrid?"}]


class ScriptedEngine:
    """The LLMEngine interface; every request 'generates' `script`, one token a step."""

    def __init__(self, loaded, script: str) -> None:
        self.loaded, self.tokenizer, self.config = loaded, loaded.tokenizer, loaded.config
        self.model = loaded.model
        self.context_length = 4096
        self.script = self.tokenizer.encode(script)
        self.requests: dict[str, tuple[int, int]] = {}  # id -> (prompt tokens, tokens emitted)
        self.stats = EngineStats()
        self.blocks = SimpleNamespace(usage=0.0, stats=SimpleNamespace(hit_rate=0.0))
        self.max_running = 4
        self.num_waiting = 0

    @property
    def num_running(self) -> int:
        return len(self.requests)

    def add_request(self, request_id, prompt_ids, params, adapter=None) -> None:
        self.requests[request_id] = (len(prompt_ids), 0)

    def abort(self, request_id) -> bool:
        return self.requests.pop(request_id, None) is not None

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        outputs = []
        for rid, (n_prompt, done) in list(self.requests.items()):
            token = self.script[done]
            finished = done + 1 == len(self.script)
            outputs.append(RequestOutput(rid, [token], self.tokenizer.decode([token]), "stop" if finished else None,
                                         n_prompt, done + 1, 0))
            if finished:
                del self.requests[rid]
            else:
                self.requests[rid] = (n_prompt, done + 1)
        return outputs


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
