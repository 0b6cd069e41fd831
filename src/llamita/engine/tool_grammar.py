"""The grammar of an answer that must be tool calls: OpenAI's tool_choice "required" or a named
function. The calls are constrained to the dialect the model's prompt asked for, so the usual
parser (tokenizer/tool_calls.py) reads them, and each call's arguments to its function's
JSON Schema.

* Llama 3 vocabularies (the built-in Llama 3.1 prompt): one JSON object
  `{"name": ..., "parameters": {...}}`, as Meta's JSON tool calling writes it.
* Everything else (Hermes / SmolLM2 / Qwen prompts): `<tool_call>[{"name": ..., "arguments":
  {...}}, ...]</tool_call>`, the form tool_prompt.py asks for; where `<tool_call>` is a special
  token of the vocabulary the grammar uses that token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llamita.engine.constraint import bound_numbers
from llamita.errors import InvalidParameterError
from llamita.sampling_params import Grammar
from llamita.tokenizer import Tokenizer

# Compact JSON inside the calls: see constraint.py for why whitespace is not left free.
_COMPACT = {"whitespace_flexible": False}


def tool_call_grammar(tokenizer: Tokenizer, tools: Sequence[dict[str, Any]], name: str | None = None) -> Grammar:
    """Calls of any of `tools` (OpenAI definitions {"type": "function", "function": {"name",
    "parameters"}}), or exactly one call of the function `name`."""
    functions = [t.get("function", t) for t in tools]
    if name is not None:
        functions = [f for f in functions if f.get("name") == name]
        if not functions:
            offered = ", ".join(repr(t.get("function", t).get("name")) for t in tools) or "none"
            raise InvalidParameterError(
                "tool_choice", f"names function {name!r}, which is not among the tools (offered: {offered})"
            )
    if not functions:
        raise InvalidParameterError("tool_choice", "asks for a tool call but no tools are given")
    if tokenizer.uses_llama3_format:
        return Grammar.json_schema({**_one_of(functions, "parameters"), "x-guidance": _COMPACT})
    calls: dict[str, Any] = {
        "type": "array",
        "items": _one_of(functions, "arguments"),
        "minItems": 1,
        "x-guidance": _COMPACT,
    }
    if name is not None:
        calls["maxItems"] = 1
    start, end = tokenizer.token_to_id("<tool_call>"), tokenizer.token_to_id("</tool_call>")
    open_, close = (
        (f"<[{start}]>", f"<[{end}]>")
        if start is not None and end is not None and tokenizer.is_special(start) and tokenizer.is_special(end)
        else ('"<tool_call>"', '"</tool_call>"')
    )
    return Grammar("lark", f"start: {open_} calls {close}\ncalls: %json {json.dumps(calls)}")


def _one_of(functions: list[dict[str, Any]], arguments_key: str) -> dict[str, Any]:
    options = []
    for f in functions:
        parameters = bound_numbers(dict(f.get("parameters") or {"type": "object", "properties": {}}))
        # Only the declared arguments: a schema that is silent on extras would let a small model
        # invent keys (and run on inside their string values); the caller cannot use them.
        if parameters.get("type") == "object":
            parameters.setdefault("additionalProperties", False)
        options.append(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", arguments_key],
                "properties": {"name": {"const": f["name"]}, arguments_key: parameters},
            }
        )
    return options[0] if len(options) == 1 else {"anyOf": options}
