"""Chat messages: validation and keeping a long conversation inside the context window."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llamita.errors import ContextOverflowError, InvalidParameterError

Message = dict[str, Any]
ROLES = ("system", "developer", "user", "assistant", "tool", "ipython")
# Content part type -> the key holding its text: chat completions' "text" (and an assistant's
# "refusal"), the Responses API's "input_text" and "output_text".
TEXT_PARTS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal"}


def validate_messages(messages: Sequence[Message]) -> list[Message]:
    """Check OpenAI-style messages: a non-empty list of {"role", "content"} dicts.

    Content is a string or a list of text parts (joined, see content_text); an assistant turn
    with `tool_calls` may have none, and a tool result (role "tool" or "ipython") may be any
    JSON value (templates render it as JSON). The "developer" role (OpenAI's newer name for
    system) becomes "system", the only name chat templates know.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidParameterError("messages", "must be a non-empty list of {'role', 'content'} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidParameterError("messages", f"message {i} is not an object")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidParameterError(
                "messages", f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}"
            )
        content = m.get("content")
        calls = m.get("tool_calls")
        if calls is not None:
            if (
                role != "assistant"
                or not isinstance(calls, list)
                or not all(
                    isinstance(c, dict)
                    and isinstance(c.get("function"), dict)
                    and isinstance(c["function"].get("name"), str)
                    for c in calls
                )
            ):
                raise InvalidParameterError(
                    "messages",
                    f"message {i}: tool_calls must be an assistant's list of "
                    "{'function': {'name', 'arguments'}} objects",
                )
            if content is None:
                content = ""
        if role in ("tool", "ipython") and isinstance(content, (dict, list, int, float, bool)):
            if isinstance(content, list) and _is_part_list(content):
                content = content_text(content, f"messages[{i}].content")
        elif isinstance(content, list):
            content = content_text(content, f"messages[{i}].content")
        elif not isinstance(content, str):
            raise InvalidParameterError("messages", f"message {i} content must be a string or a list of text parts")
        out.append({**m, "role": "system" if role == "developer" else role, "content": content})
    return out


def content_text(parts: list[Any], where: str) -> str:
    """The text of a content-part list ([{"type": "text", "text": ...}, ...]): the text parts
    joined with newlines, as vLLM and llama.cpp's server join them. A part the model cannot
    read (an image, audio, a file) is an InvalidParameterError naming it, e.g.
    `messages[1].content[0]` (`where` is the list's own path)."""
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS:
            what = f"a {kind!r} part" if isinstance(kind, str) else "not a {'type', ...} part"
            raise InvalidParameterError(
                f"{where}[{j}]", f"is {what}; this model reads text only (parts of type 'text')"
            )
        text = part.get(TEXT_PARTS[kind])
        if not isinstance(text, str):
            raise InvalidParameterError(f"{where}[{j}].{TEXT_PARTS[kind]}", "must be a string")
        texts.append(text)
    return "\n".join(texts)


def _is_part_list(value: list[Any]) -> bool:
    """Whether a tool result's list is content parts (joined) rather than a JSON value of its own."""
    return bool(value) and all(isinstance(p, dict) and p.get("type") in TEXT_PARTS for p in value)


def validate_tools(tools: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """OpenAI tool definitions ({"type": "function", "function": {"name", "description",
    "parameters"}}); a bare {"name", ...} function is wrapped. None or [] -> None."""
    if tools is None:
        return None
    if isinstance(tools, (str, bytes, dict)) or not isinstance(tools, Sequence):
        raise InvalidParameterError("tools", "must be a list of {'type': 'function', 'function': {...}} objects")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidParameterError("tools", f"tool {i} is not an object")
        if "function" not in tool and "name" in tool:
            tool = {"type": "function", "function": tool}
        function = tool.get("function")
        if (
            tool.get("type", "function") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise InvalidParameterError(
                "tools", f"tool {i} must be {{'type': 'function', 'function': {{'name': ...}}}}"
            )
        out.append({"type": "function", **tool})
    return out or None


def fit_messages(
    messages: Sequence[Message], count_tokens: Callable[[list[Message]], int], budget: int
) -> tuple[list[Message], int]:
    """Drop the oldest turns until the rendered conversation takes at most `budget` tokens.

    System messages are always kept; the last message (the user's new turn) too. A user message
    is dropped together with the answers that follow it, so the history never starts with an
    orphan assistant turn. Returns the kept messages and how many were dropped.
    """
    msgs = list(messages)
    system = [m for m in msgs if m["role"] == "system"]
    rest = [m for m in msgs if m["role"] != "system"]
    dropped = 0
    while count_tokens(system + rest) > budget:
        if len(rest) <= 1:
            raise ContextOverflowError(
                f"the last message alone does not fit in the context window ({budget} tokens "
                "available for the prompt); shorten it or use a model with a longer context"
            )
        # Remove the first turn: one message plus everything up to the next user message.
        cut = 1
        while cut < len(rest) - 1 and rest[cut]["role"] != "user":
            cut += 1
        rest = rest[cut:]
        dropped += cut
    return system + rest, dropped
