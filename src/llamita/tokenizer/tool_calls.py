"""Find tool calls in generated text and return them in OpenAI's form.

Models write calls in several dialects; all are accepted:

* Llama 3.1 JSON, alone or after `<|python_tag|>`:
  `{"name": "get_weather", "parameters": {"city": "Madrid"}}` ("arguments" and a "type" key
  are accepted too; several calls may be separated by ";").
* Llama 3.1 built-in tools after `<|python_tag|>`: `brave_search.call(query="...")`,
  `wolfram_alpha.call(query="...")`; any other text after the tag is code for
  `code_interpreter` (arguments {"code": ...}).
* `<function=NAME>{...}</function>` (Meta's prompt-defined format, docs/llama-reference.md §4.6).
* `<tool_call>{...}</tool_call>` or `<tool_call>[{...}, ...]</tool_call>` (Hermes / ChatML
  models such as Qwen and SmolLM2).

Text that does not parse stays content: a malformed call is shown to the user, never raised.
Only text. `ast` reads built-in calls; nothing is ever evaluated.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any, Protocol

PYTHON_TAG = "<|python_tag|>"
# Llama 3 end markers a caller may leave at the end of decoded text.
_END_MARKERS = ("<|eom_id|>", "<|eot_id|>", "<|end_of_text|>")
# Built-in tools recognised even without `<|python_tag|>` (code_interpreter needs the tag).
BUILTIN_CALL_TOOLS = ("brave_search", "wolfram_alpha")

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_FUNCTION_RE = re.compile(r"<function=([\w.\-]+)>(.*?)</function>", re.DOTALL)

ToolCall = dict[str, Any]


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split generated text into (content, tool calls).

    Each call is {"id": "call_…", "type": "function", "function": {"name": str,
    "arguments": JSON object as a string}}. With no call found, content is `text` unchanged
    (less a bare `<|python_tag|>`).
    """
    if PYTHON_TAG in text:
        before, _, after = text.partition(PYTHON_TAG)
        tagged = _python_tag_calls(_strip_end_markers(after))
        if tagged is not None:
            return before.strip(), tagged
        return before + after, []  # a tag with nothing after it: drop the marker

    calls: list[ToolCall] = []
    content = text
    for pattern, read in ((_TOOL_CALL_RE, _tool_call_block), (_FUNCTION_RE, _function_block)):
        if pattern.search(content):
            content, found = _take_blocks(pattern, content, read)
            calls += found
    if calls:
        return content.strip(), calls

    body = _strip_end_markers(text).strip()
    json_calls = _json_calls(body, strict=True)
    if json_calls is None:
        builtin = _builtin_call(body)
        json_calls = [builtin] if builtin and builtin["function"]["name"] in BUILTIN_CALL_TOOLS else None
    if json_calls:
        return "", json_calls
    return text, []


class _TokenText(Protocol):
    def token_to_id(self, text: str) -> int | None: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def find_tool_calls(tokenizer: _TokenText, text: str, token_ids: Sequence[int]) -> tuple[str, list[ToolCall]]:
    """(content, tool calls) of a finished completion, from its streamed `text` and its ids.

    The streamed text drops special tokens, but Llama's `<|python_tag|>` marks a call: when it
    is among the ids, the ids are decoded again with it kept."""
    tag = tokenizer.token_to_id(PYTHON_TAG)
    if tag is not None and tag in token_ids:
        text = tokenizer.decode(token_ids)
    return parse_tool_calls(text)


def make_tool_call(name: str, arguments: dict[str, Any]) -> ToolCall:
    """An OpenAI-style tool call with a fresh id."""
    return {
        "id": f"call_{secrets.token_hex(12)}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def arguments_as_dict(arguments: Any) -> Any:
    """A call's arguments as a dict when they are a JSON object string (OpenAI sends strings;
    chat templates expect dicts); anything else is returned unchanged."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return arguments
        return parsed if isinstance(parsed, dict) else arguments
    return arguments


def with_dict_arguments(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the messages whose tool-call arguments are dicts (the caller's stay as they are).

    Chat templates (HF convention, also vLLM's) render `arguments` as a mapping.
    """
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls and isinstance(calls, list):
            message = {**message, "tool_calls": [_call_with_dict_arguments(c) for c in calls]}
        out.append(message)
    return out


# ---------------------------------------------------------------- internals


def _call_with_dict_arguments(call: Any) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = call["function"]
    return {**call, "function": {**function, "arguments": arguments_as_dict(function.get("arguments", {}))}}


def _strip_end_markers(text: str) -> str:
    text = text.rstrip()
    stripped = True
    while stripped:
        stripped = False
        for marker in _END_MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                stripped = True
    return text


def _python_tag_calls(body: str) -> list[ToolCall] | None:
    """Calls written after `<|python_tag|>`: JSON, a built-in `.call(...)`, or code."""
    body = body.strip()
    if not body:
        return None
    calls = _json_calls(body, strict=False)
    if calls is not None:
        return calls
    if ";" in body:  # Llama 3.2 sometimes writes `{...}; {...}`
        joined: list[ToolCall] = []
        for piece in filter(None, (p.strip() for p in body.split(";"))):
            found = _json_calls(piece, strict=False)
            if found is None:
                break
            joined += found
        else:
            if joined:
                return joined
    builtin = _builtin_call(body)
    if builtin is not None:
        return [builtin]
    return [make_tool_call("code_interpreter", {"code": body})]


def _take_blocks(
    pattern: re.Pattern[str], text: str, read: Callable[[re.Match[str]], list[ToolCall] | None]
) -> tuple[str, list[ToolCall]]:
    """Replace every block `read` can parse with nothing; unparsable blocks stay in the text."""
    calls: list[ToolCall] = []

    def replace(match: re.Match[str]) -> str:
        found = read(match)
        if found is None:
            return match.group(0)
        calls.extend(found)
        return ""

    return pattern.sub(replace, text), calls


def _tool_call_block(match: re.Match[str]) -> list[ToolCall] | None:
    return _json_calls(match.group(1).strip(), strict=False)


def _function_block(match: re.Match[str]) -> list[ToolCall] | None:
    body = match.group(2).strip()
    if not body:
        return [make_tool_call(match.group(1), {})]
    try:
        arguments = json.loads(body)
    except ValueError:
        return None
    if not isinstance(arguments, dict):
        return None
    return [make_tool_call(match.group(1), arguments)]


def _json_calls(text: str, *, strict: bool) -> list[ToolCall] | None:
    """Calls from a JSON object or a list of objects; None if `text` is not exactly that.

    strict: an object needs a "parameters" or "arguments" key (for text with no call marker,
    where a plain JSON answer such as {"name": "Ana"} must stay content).
    """
    if not text or text[0] not in "[{":
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        call = _call_from_object(item, strict=strict)
        if call is None:
            return None
        calls.append(call)
    return calls or None


def _call_from_object(item: Any, *, strict: bool) -> ToolCall | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict) and "name" not in item:  # OpenAI's own shape
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str) or not name:
        return None
    key = "parameters" if "parameters" in item else "arguments" if "arguments" in item else None
    if key is None and strict:
        return None
    arguments = arguments_as_dict(item.get(key, {})) if key else {}
    if not isinstance(arguments, dict):
        return None
    return make_tool_call(name, arguments)


def _builtin_call(text: str) -> ToolCall | None:
    """`tool.call(key="value", ...)` with literal keyword arguments only, else None."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    node = tree.body
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "call"
        and isinstance(node.func.value, ast.Name)
        and not node.args
    ):
        return None
    arguments = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            return None
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return None
    return make_tool_call(node.func.value.id, arguments)
