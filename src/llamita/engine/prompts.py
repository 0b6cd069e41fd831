"""Plain-text prompts and chats into prompt token ids, the one way every front end does it
(the Python API, the CLI and the HTTP server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llamita.engine.conversation import Message, validate_messages, validate_tools
from llamita.errors import InvalidParameterError
from llamita.tokenizer.tokenizer import Tokenizer


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Plain-text prompt -> ids: BOS if the model wants one; control-token strings in the
    text stay plain text."""
    if not isinstance(prompt, str):
        raise InvalidParameterError("prompt", f"must be a string, got {type(prompt).__name__}")
    return tokenizer.encode(prompt, add_bos=tokenizer.add_bos)


def encode_chat(tokenizer: Tokenizer, messages: Sequence[Message], *,
                tools: Sequence[dict[str, Any]] | None = None, **template_kwargs: Any) -> list[int]:
    """Chat messages -> ids through the model's chat template, ready for the assistant.

    tools: OpenAI JSON-schema tool definitions, given to the template as `tools`.
    template_kwargs: more template variables (builtin_tools, date_string, ...)."""
    tools = validate_tools(tools)
    if tools is not None:
        template_kwargs["tools"] = tools
    return tokenizer.encode_chat(validate_messages(messages), add_generation_prompt=True,
                                 **template_kwargs)
