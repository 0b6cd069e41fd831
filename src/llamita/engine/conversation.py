"""Chat messages: validation and keeping a long conversation inside the context window."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llamita.errors import ContextOverflowError, InvalidParameterError

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool", "ipython")


def validate_messages(messages: Sequence[Message]) -> list[Message]:
    """Check OpenAI-style messages: a non-empty list of {"role", "content"} dicts."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidParameterError("messages", "must be a non-empty list of {'role', 'content'} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidParameterError("messages", f"message {i} is not an object")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidParameterError("messages", f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        content = m.get("content")
        if content is None and role == "assistant" and m.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            raise InvalidParameterError("messages", f"message {i} content must be a string")
        out.append({**m, "content": content})
    return out


def fit_messages(messages: Sequence[Message], count_tokens: Callable[[list[Message]], int],
                 budget: int) -> tuple[list[Message], int]:
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
                "available for the prompt); shorten it or use a model with a longer context")
        # Remove the first turn: one message plus everything up to the next user message.
        cut = 1
        while cut < len(rest) - 1 and rest[cut]["role"] != "user":
            cut += 1
        rest = rest[cut:]
        dropped += cut
    return system + rest, dropped
