"""run_agent with a scripted model (deterministic), LLM.chat's tool-call parsing, and one real
run on the default model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from llamita.api.agent import AgentResult, function_tool, run_agent
from llamita.api.llm import LLM, GenerationOutput
from llamita.engine.conversation import validate_messages, validate_tools
from llamita.errors import InvalidParameterError
from llamita.sampling_params import SamplingParams
from llamita.tokenizer import Tokenizer
from llamita.tokenizer.tool_calls import make_tool_call


@dataclass
class Reply:
    text: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"


class ScriptedModel:
    """Answers chat() with canned replies, recording what it was given."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.seen: list[dict[str, Any]] = []

    def chat(self, messages, params=None, *, tools=None, **template_kwargs) -> Reply:
        self.seen.append({"messages": [dict(m) for m in messages], "tools": tools, **template_kwargs})
        return self.replies.pop(0)


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return make_tool_call(name, arguments)


def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
    """Current weather in a city.

    Longer notes the model does not need.
    """
    return {"city": city, "temperature": 31 if unit == "celsius" else 88}


def broken(x: int) -> int:
    raise RuntimeError("the service is down")


USER = [{"role": "user", "content": "Weather in Madrid?"}]


def test_call_then_answer() -> None:
    weather = call("get_weather", city="Madrid")
    model = ScriptedModel(Reply("", [weather], "tool_calls"), Reply("31 degrees in Madrid."))
    result = run_agent(model, USER, {"get_weather": get_weather}, max_steps=3)
    assert isinstance(result, AgentResult)
    assert (result.content, result.finish_reason, result.steps) == ("31 degrees in Madrid.", "stop", 2)
    assert result.messages[0] == USER[0]
    assert result.messages[1] == {"role": "assistant", "content": "", "tool_calls": [weather]}
    assert result.messages[2] == {
        "role": "tool",
        "tool_call_id": weather["id"],
        "name": "get_weather",
        "content": {"city": "Madrid", "temperature": 31},
    }
    assert result.messages[3] == {"role": "assistant", "content": "31 degrees in Madrid."}
    # The second step saw the result; both saw the tool built from the signature.
    assert model.seen[1]["messages"] == result.messages[:3]
    assert model.seen[0]["tools"] == [function_tool("get_weather", get_weather)]
    assert USER == [{"role": "user", "content": "Weather in Madrid?"}]  # caller's list untouched


def test_errors_are_fed_back_not_raised() -> None:
    calls = [
        call("broken", x=1),
        call("nope"),
        call("get_weather", town="Madrid"),
        {**call("get_weather"), "function": {"name": "get_weather", "arguments": "{bad"}},
    ]
    model = ScriptedModel(Reply("Trying.", calls, "tool_calls"), Reply("Sorry, no luck."))
    result = run_agent(model, USER, {"get_weather": get_weather, "broken": broken})
    results = [m["content"] for m in result.messages if m["role"] == "tool"]
    assert results[0] == "error: broken raised RuntimeError: the service is down"
    assert results[1].startswith("error: there is no function named 'nope'; available: get_weather, broken")
    assert results[2].startswith("error: get_weather raised TypeError:")
    assert results[3].startswith("error: the arguments of get_weather are not valid JSON")
    # One call per assistant turn, each followed by its result.
    roles = [m["role"] for m in result.messages]
    assert roles == ["user"] + ["assistant", "tool"] * 4 + ["assistant"]
    assert result.messages[1]["content"] == "Trying." and result.messages[3]["content"] == ""
    assert result.finish_reason == "stop" and result.content == "Sorry, no luck."


def test_step_limit() -> None:
    ran = []
    model = ScriptedModel(*[Reply("", [call("record", n=i)], "tool_calls") for i in range(3)])
    result = run_agent(model, USER, {"record": lambda n: ran.append(n) or "ok"}, max_steps=2)
    assert (result.finish_reason, result.steps) == ("max_steps", 2)
    assert ran == [0]  # the call of the last allowed step is left for the caller
    assert result.output.tool_calls[0]["function"]["arguments"] == '{"n": 1}'
    assert result.messages[-1]["role"] == "tool"


def test_builtin_tools_use_ipython() -> None:
    search = call("brave_search", query="gold price")
    model = ScriptedModel(Reply("", [search], "tool_calls"), Reply("2400 USD/oz."))
    result = run_agent(
        model,
        USER,
        {"brave_search": lambda query: f"{query}: 2400 USD/oz", "get_weather": get_weather},
        builtin_tools=["brave_search"],
        date_string="1 Jan 2025",
    )
    assert model.seen[0]["builtin_tools"] == ["brave_search"]
    assert model.seen[0]["date_string"] == "1 Jan 2025"
    assert [t["function"]["name"] for t in model.seen[0]["tools"]] == ["get_weather"]
    assert result.messages[2]["role"] == "ipython"
    assert result.messages[2]["content"] == "gold price: 2400 USD/oz"


def test_results_become_json_data() -> None:
    model = ScriptedModel(Reply("", [call("f")], "tool_calls"), Reply("done"))
    result = run_agent(model, USER, {"f": lambda: {"when": __import__("datetime").date(2025, 1, 2)}})
    assert result.messages[2]["content"] == {"when": "2025-01-02"}
    model = ScriptedModel(Reply("", [call("f")], "tool_calls"), Reply("done"))
    assert run_agent(model, USER, {"f": lambda: None}).messages[2]["content"] == "null"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_steps": 0}, "max_steps"),
        ({"builtin_tools": ["calculator"]}, "builtin_tools"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(InvalidParameterError, match=name):
        run_agent(ScriptedModel(), USER, {"get_weather": get_weather}, **kwargs)
    with pytest.raises(InvalidParameterError, match="functions"):
        run_agent(ScriptedModel(), USER, {"x": 3})


def test_function_tool_schema() -> None:
    def lookup(
        query: str, limit: int = 5, exact: bool | None = None, tags: list[str] = (), *args: Any, **kwargs: Any
    ) -> str:
        """Search the notes."""

    assert function_tool("get_weather", get_weather)["function"] == {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        },
    }
    props = function_tool("lookup", lookup)["function"]["parameters"]["properties"]
    assert props == {
        "query": {"type": "string"},
        "limit": {"type": "integer"},
        "exact": {"type": "boolean"},
        "tags": {"type": "array"},
    }


# ---------------------------------------------------------------- messages and tools


def test_tool_messages_validate() -> None:
    messages = validate_messages(
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": None, "tool_calls": [call("f")]},
            {"role": "tool", "content": {"a": 1}},
            {"role": "ipython", "content": "text"},
        ]
    )
    assert messages[1]["content"] == "" and messages[2]["content"] == {"a": 1}
    for bad in (
        {"role": "user", "content": {"a": 1}},
        {"role": "user", "content": "x", "tool_calls": [call("f")]},
        {"role": "assistant", "content": "x", "tool_calls": [{"name": "f"}]},
    ):
        with pytest.raises(InvalidParameterError):
            validate_messages([bad])


def test_validate_tools() -> None:
    wrapped = validate_tools([{"name": "f", "parameters": {}}])
    assert wrapped == [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert validate_tools([]) is None and validate_tools(None) is None
    for bad in (
        {"type": "function"},
        [{"type": "retrieval", "function": {"name": "f"}}],
        ["f"],
        [{"function": {"name": ""}}],
    ):
        with pytest.raises(InvalidParameterError, match="tools"):
            validate_tools(bad)


def test_llm_reads_calls_after_python_tag() -> None:
    # The streamed text drops special tokens; the parser must still see <|python_tag|>.
    tokens = ["<|python_tag|>", "<|eom_id|>", "x", "=", "1"]
    tok = Tokenizer(tokens, [3, 3, 1, 1, 1], [], pre="gpt2")
    out = GenerationOutput("x=1", [0, 2, 3, 4], "stop", [2])
    LLM._find_tool_calls(SimpleNamespace(tokenizer=tok), out)
    assert out.finish_reason == "tool_calls" and out.text == ""
    assert json.loads(out.tool_calls[0]["function"]["arguments"]) == {"code": "x=1"}
    plain = GenerationOutput("x=1", [2, 3, 4], "stop", [2])
    LLM._find_tool_calls(SimpleNamespace(tokenizer=tok), plain)
    assert (plain.text, plain.tool_calls, plain.finish_reason) == ("x=1", [], "stop")


# ---------------------------------------------------------------- the real model


def test_default_model_with_tools_runs(llm_f32) -> None:
    # SmolLM2-135M seldom calls tools; this checks the whole path (template without tools ->
    # tools in the system message -> generation -> parsing), not the model's skill.
    params = SamplingParams(temperature=0, max_tokens=12)
    result = run_agent(llm_f32, USER, {"get_weather": get_weather}, params, max_steps=2)
    assert result.finish_reason in ("stop", "length", "max_steps")
    assert result.content or result.output.tool_calls
    assert "<tools>" in llm_f32.tokenizer.decode(result.output.prompt_token_ids)
