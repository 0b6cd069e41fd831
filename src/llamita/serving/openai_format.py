"""OpenAI response objects (chat.completion, text_completion, their stream chunks, usage,
logprobs), built from what the engine produced. Pure functions: no I/O, no engine."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

from llamita.engine.llm_engine import TokenLogprob
from llamita.serving.request_completions import Completion
from llamita.tokenizer.tokenizer import Tokenizer
from llamita.tokenizer.tool_calls import ToolCall


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: `data: {...}` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def usage(completions: list[Completion], n_prompts: int = 1) -> dict[str, Any]:
    """Token counts of a response. Each prompt counts once although n choices ran on it
    (OpenAI's rule); cached tokens are those of its first choice."""
    n = len(completions) // n_prompts
    firsts = completions[::n]
    prompt = sum(c.prompt_tokens for c in firsts)
    completion = sum(c.completion_tokens for c in completions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(c.cached_tokens for c in firsts)},
    }


# ------------------------------------------------------------------------------- logprobs


def _chat_token(tokenizer: Tokenizer, token_id: int, logprob: float) -> dict[str, Any]:
    raw = tokenizer.token_bytes(token_id)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(tokenizer: Tokenizer, logprobs: list[TokenLogprob]) -> dict[str, Any]:
    """choices[i].logprobs of a chat completion: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    return {
        "content": [
            {
                **_chat_token(tokenizer, lp.token_id, lp.logprob),
                "top_logprobs": [_chat_token(tokenizer, t, p) for t, p in lp.top],
            }
            for lp in logprobs
        ]
    }


def completion_logprobs(tokenizer: Tokenizer, logprobs: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy completions shape: parallel lists tokens, token_logprobs, top_logprobs (a
    {token: logprob} dict per position) and text_offset (characters from the start of the
    completion text, counted on the tokens' own text)."""
    return echo_logprobs(tokenizer, [lp.token_id for lp in logprobs], logprobs, offset)


def echo_logprobs(
    tokenizer: Tokenizer, token_ids: list[int], scored: Sequence[TokenLogprob | None], offset: int = 0
) -> dict[str, Any]:
    """The legacy shape for any tokens, the prompt's own included: an entry of None (the first
    prompt token has no context) gives null token_logprob and top_logprobs, as OpenAI did."""
    tokens, offsets = [], []
    for token_id in token_ids:
        piece = tokenizer.token_piece(token_id)
        tokens.append(piece)
        offsets.append(offset)
        offset += len(piece)
    return {
        "tokens": tokens,
        "token_logprobs": [None if lp is None else lp.logprob for lp in scored],
        "top_logprobs": [None if lp is None else {tokenizer.token_piece(t): p for t, p in lp.top} for lp in scored],
        "text_offset": offsets,
    }


# ------------------------------------------------------------------------------- chat


def chat_message(text: str, tool_calls: list[ToolCall]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


# ------------------------------------------------------------------------------- envelopes


def response(
    kind: str, response_id: str, model: str, choices: list[dict[str, Any]], token_usage: dict[str, Any]
) -> dict[str, Any]:
    """A whole answer; kind is "chat.completion" or "text_completion"."""
    return {
        "id": response_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": token_usage,
        "system_fingerprint": None,
    }


def chunk(
    kind: str, response_id: str, model: str, created: int, choices: list[dict[str, Any]], include_usage: bool
) -> dict[str, Any]:
    """One streamed piece; kind is "chat.completion.chunk" or "text_completion". With
    include_usage every chunk has "usage": null but the last, which the caller adds."""
    out: dict[str, Any] = {
        "id": response_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": choices,
        "system_fingerprint": None,
    }
    if include_usage:
        out["usage"] = None
    return out
