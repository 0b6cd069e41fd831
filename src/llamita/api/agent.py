"""`run_agent`: let a model call your Python functions until it answers.

    def get_weather(city: str) -> dict:
        "Current weather in a city."
        return {"city": city, "temperature_c": 31}

    result = run_agent(llm, [{"role": "user", "content": "Weather in Madrid?"}],
                       {"get_weather": get_weather}, SamplingParams(temperature=0))
    print(result.content, result.finish_reason)

Each step asks the model (`llm.chat(messages, params, tools=...)`); every tool call it makes
is run with the parsed arguments and the result is appended to the conversation as a `tool`
message (`ipython` for Llama 3.1's built-in tools). A function that raises, an unknown name or
bad arguments become an error text the model reads on the next step, never an exception here.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llamita.engine.conversation import Message
from llamita.errors import InvalidParameterError
from llamita.sampling_params import SamplingParams

# Llama 3.1's built-in tools; their results go back with role "ipython".
LLAMA_BUILTIN_TOOLS = ("brave_search", "wolfram_alpha", "code_interpreter")

_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    tuple: "array",
    dict: "object",
}


class ChatModel(Protocol):
    """What run_agent needs: `LLM.chat`'s interface, returning an object with `text`,
    `tool_calls` and `finish_reason`."""

    def chat(
        self,
        messages: Sequence[Message],
        params: SamplingParams | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> Any: ...


@dataclass
class AgentResult:
    """How an agent run ended.

    content: the model's final answer (on "max_steps", the text beside its last, unrun calls).
    finish_reason: the last answer's ("stop" or "length"), or "max_steps" when the model was
        still calling tools at the step limit (those calls are in `output.tool_calls`, not run).
    messages: the whole conversation: the caller's, then the calls, results and the answer.
    steps: how many times the model was asked.
    output: the model's last output (a GenerationOutput for an LLM).
    """

    content: str
    finish_reason: str
    messages: list[Message]
    steps: int
    output: Any


def run_agent(
    llm: ChatModel,
    messages: Sequence[Message],
    functions: Mapping[str, Callable[..., Any]],
    params: SamplingParams | None = None,
    *,
    max_steps: int = 5,
    tools: Sequence[dict[str, Any]] | None = None,
    builtin_tools: Sequence[str] = (),
    **template_kwargs: Any,
) -> AgentResult:
    """Answer `messages`, letting the model call `functions` (name -> Python callable).

    max_steps: the most times the model is asked (>= 1).
    tools: the definitions shown to the model; default: built from each function's signature
        and docstring (`function_tool`), except for `builtin_tools`.
    builtin_tools: names in `functions` offered as Llama 3.1 built-ins (brave_search,
        wolfram_alpha, code_interpreter; code_interpreter gets {"code": ...}).
    template_kwargs: more chat-template variables (date_string, ...).
    """
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise InvalidParameterError("max_steps", f"must be an integer >= 1, got {max_steps!r}")
    if not isinstance(functions, Mapping) or not all(callable(f) for f in functions.values()):
        raise InvalidParameterError("functions", "must map tool names to Python callables")
    builtin = list(builtin_tools)
    unknown = [name for name in builtin if name not in LLAMA_BUILTIN_TOOLS]
    if unknown:
        raise InvalidParameterError("builtin_tools", f"{unknown[0]!r} is not one of {', '.join(LLAMA_BUILTIN_TOOLS)}")
    if tools is None:
        tools = [function_tool(name, f) for name, f in functions.items() if name not in builtin]
    if builtin:
        template_kwargs["builtin_tools"] = builtin

    history = list(messages)
    step = 0
    while True:
        step += 1
        out = llm.chat(history, params, tools=list(tools) or None, **template_kwargs)
        calls = list(getattr(out, "tool_calls", None) or [])
        if not calls:
            history.append({"role": "assistant", "content": out.text})
            return AgentResult(out.text, out.finish_reason, history, step, out)
        if step == max_steps:
            return AgentResult(out.text, "max_steps", history, step, out)
        for i, call in enumerate(calls):
            # One call per assistant turn: Llama 3.1's format takes no more.
            history.append({"role": "assistant", "content": out.text if i == 0 else "", "tool_calls": [call]})
            name = call["function"]["name"]
            history.append(
                {
                    "role": "ipython" if name in builtin else "tool",
                    "tool_call_id": call.get("id"),
                    "name": name,
                    "content": _result_content(_invoke(functions, call)),
                }
            )


def function_tool(name: str, function: Callable[..., Any]) -> dict[str, Any]:
    """An OpenAI tool definition for a Python function: its docstring's first paragraph as the
    description, its parameters with JSON types from the annotations (str, int, float, bool,
    list, dict; X | None as X), those without a default required."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable annotations: describe the parameters without types
        hints = {}
    properties: dict[str, dict[str, Any]] = {}
    required = []
    for param in inspect.signature(function).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        json_type = _json_type(hints.get(param.name))
        properties[param.name] = {"type": json_type} if json_type else {}
        if param.default is param.empty:
            required.append(param.name)
    spec: dict[str, Any] = {"name": name}
    description = (inspect.getdoc(function) or "").split("\n\n")[0].replace("\n", " ").strip()
    if description:
        spec["description"] = description
    spec["parameters"] = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": spec}


def _json_type(hint: Any) -> str | None:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _json_type(args[0]) if len(args) == 1 else None
    return _JSON_TYPES.get(origin or hint)


def _invoke(functions: Mapping[str, Callable[..., Any]], call: dict[str, Any]) -> Any:
    """Run one call; any failure becomes a message for the model."""
    name = call["function"]["name"]
    function = functions.get(name)
    if function is None:
        return f"error: there is no function named {name!r}; available: {', '.join(functions)}"
    try:
        arguments = json.loads(call["function"].get("arguments") or "{}")
    except (TypeError, ValueError) as exc:
        return f"error: the arguments of {name} are not valid JSON: {exc}"
    if not isinstance(arguments, dict):
        return f"error: the arguments of {name} must be a JSON object"
    try:
        return function(**arguments)
    except Exception as exc:  # the model reads the error and may retry; the loop goes on
        return f"error: {name} raised {type(exc).__name__}: {exc}"


def _result_content(result: Any) -> Any:
    """What goes into the tool message: text as is, a dict or list as plain JSON data (templates
    render it with tojson), anything else as its JSON text; what JSON cannot hold, as str()."""
    if isinstance(result, str):
        return result
    try:
        text = json.dumps(result, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # e.g. circular references
        return str(result)
    return json.loads(text) if isinstance(result, (dict, list)) else text
