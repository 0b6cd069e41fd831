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


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Message],
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    continue_final_message: bool = False,
    **template_kwargs: Any,
) -> list[int]:
    """Chat messages -> ids through the model's chat template, ready for the assistant.

    tools: OpenAI JSON-schema tool definitions, given to the template as `tools`.
    continue_final_message: the last message is the assistant's and the model continues it
    (assistant prefill, vLLM's option of this name) instead of starting a new turn.
    template_kwargs: more template variables (builtin_tools, date_string, ...)."""
    tools = validate_tools(tools)
    if tools is not None:
        template_kwargs["tools"] = tools
    checked = validate_messages(messages)
    if continue_final_message:
        return _continue_final_message(tokenizer, checked, template_kwargs)
    return tokenizer.encode_chat(checked, add_generation_prompt=True, **template_kwargs)


# Most tokens a template writes after a message's text to end the turn (end-of-turn, newline, EOS).
_MAX_TURN_END_TOKENS = 8


def _continue_final_message(
    tokenizer: Tokenizer, messages: list[Message], template_kwargs: dict[str, Any]
) -> list[int]:
    """The conversation rendered as a finished chat, cut right after the final message's text,
    so that the model's next token continues it. Works on ids, so the template's special
    tokens stay what the template made them; as vLLM, it finds the text's end by its content."""
    last = messages[-1]
    if last["role"] != "assistant" or not isinstance(last["content"], str) or last.get("tool_calls"):
        raise InvalidParameterError(
            "continue_final_message", "needs the last message to be the assistant's text (the answer to continue)"
        )
    text = last["content"].rstrip()  # many templates trim a message; its end is what counts
    if not text:  # nothing to continue: the same as a new assistant turn
        return tokenizer.encode_chat(messages[:-1], add_generation_prompt=True, **template_kwargs)
    ids = tokenizer.encode_chat(messages, add_generation_prompt=False, **template_kwargs)
    want = text.encode()
    for end in range(len(ids), max(len(ids) - _MAX_TURN_END_TOKENS, 0), -1):
        # Each token is at least one byte, so len(want) tokens cover the text's end.
        tail = b"".join(tokenizer.token_bytes(i) for i in ids[max(0, end - len(want)) : end])
        if tail.endswith(want):
            return ids[:end]
    raise InvalidParameterError(
        "continue_final_message",
        "the chat template does not end the final message with its text, so it cannot be continued",
    )
