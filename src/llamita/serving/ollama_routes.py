"""Ollama's API: /api/chat and /api/generate (NDJSON streams unless "stream": false) and
/api/version; the model list and management (/api/tags, /api/ps, /api/pull...) are in
library_routes.py.

Durations are nanoseconds, as Ollama reports them. A request with no prompt only loads its
model ("done_reason": "load"); with "keep_alive": 0 as well, it unloads it ("unload").
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from llamita import __version__
from llamita.engine.prompts import encode_chat, encode_prompt
from llamita.errors import ContextOverflowError
from llamita.sampling_params import SamplingParams
from llamita.serving.errors import APIError, api_error, not_supported
from llamita.serving.openapi import request_body
from llamita.serving.params import ollama_grammar, ollama_sampling_params
from llamita.serving.protocol import OllamaChatRequest, OllamaGenerateRequest, parse_body
from llamita.serving.rag_chat import rag_prompt
from llamita.serving.request_body import field, read_json_object
from llamita.serving.request_completions import Completion, Generation
from llamita.serving.state import ServerState, keep_alive_of, load_seconds, model_state
from llamita.tokenizer.tool_calls import arguments_as_dict, find_tool_calls

# Ollama's default context window (docs/context-length: 4k below 24 GiB of VRAM, so on CPUs).
DEFAULT_NUM_CTX = 4096

router = APIRouter()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


# ------------------------------------------------------------------------------- requests


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name in ("images", "suffix", "template", "context"):
        if body.get(name):
            raise not_supported(name, f"'{name}'")
    if isinstance(body.get("messages"), list) and any(
        isinstance(m, dict) and m.get("images") for m in body["messages"]
    ):
        raise not_supported("messages.images", "images")


def _fit(state: ServerState, prompt: list[int], params: SamplingParams, options: dict[str, Any]) -> SamplingParams:
    """Apply num_ctx: a window larger than the model's is clamped to it, a smaller one limits
    this request (prompt plus generated tokens). Without it, Ollama's default window (4096
    tokens, or $OLLAMA_CONTEXT_LENGTH) bounds the answer as it does in Ollama: a model caught
    in a loop stops with done_reason "length" instead of filling a 128k window for an hour. A
    prompt already longer than that default gets the model's whole window, not an error."""
    num_ctx = field(options, "num_ctx", int, where="options.")
    if num_ctx is None and state.loaded.settings is not None:
        num_ctx = state.loaded.settings.num_ctx  # a created model's PARAMETER num_ctx
    if num_ctx is None:
        num_ctx = default_num_ctx()
        if len(prompt) >= num_ctx:
            return params
    if num_ctx >= state.context_length:
        return params  # the engine checks the model's own window
    if num_ctx < 1:
        raise APIError(400, f"'options.num_ctx' must be >= 1, got {num_ctx}", param="options.num_ctx")
    n = len(prompt)
    if n >= num_ctx:
        raise ContextOverflowError(
            f"the prompt has {n} tokens but num_ctx is {num_ctx} (prompt plus at "
            f"least one generated token): {n + 1 - num_ctx} too many"
        )
    room = num_ctx - n
    return params.replace(max_tokens=room if params.max_tokens is None else min(params.max_tokens, room))


def default_num_ctx() -> int:
    """Ollama's default context window: $OLLAMA_CONTEXT_LENGTH, else 4096 (Ollama's default
    below 24 GiB of VRAM, and so on every CPU)."""
    value = os.environ.get("OLLAMA_CONTEXT_LENGTH", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_NUM_CTX


async def _start(state: ServerState, body: dict[str, Any], prompt: list[int]) -> Generation:
    options = field(body, "options", dict, {})
    params = _fit(state, prompt, ollama_sampling_params(options, state.sampling_defaults), options)
    params = params.replace(grammar=ollama_grammar(body.get("format")))
    return await Generation.start(state.loop, [prompt], [params], state.adapter_of(body))


def _final(c: Completion, done_reason: str | None, load: float) -> dict[str, Any]:
    """The statistics Ollama puts on the last object of an answer; `load`: seconds the request
    waited for its model to load (counted in total_duration too, as Ollama does)."""
    end = c.finished_at or time.perf_counter()
    first = c.first_output_at or end
    return {
        "done": True,
        "done_reason": done_reason or "stop",
        "total_duration": _ns(end - c.started_at + load),
        "load_duration": _ns(load),
        "prompt_eval_count": c.prompt_tokens,
        "prompt_eval_duration": _ns(first - c.started_at),
        "eval_count": c.completion_tokens,
        "eval_duration": _ns(end - first),
    }


def _ndjson(lines: AsyncIterator[dict[str, Any]], generation: Generation) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for line in lines:
                yield json.dumps(line, ensure_ascii=False) + "\n"
        except Exception as e:  # headers are sent: the error goes as the last line
            yield api_error(e).body_text() + "\n"
        finally:  # also on a client disconnect: abort at once
            generation.close()

    return StreamingResponse(body(), media_type="application/x-ndjson")


async def _answer(
    request: Request, state: ServerState, generation: Generation, stream: bool, shape: Any, *, hold: bool = False
) -> Any:
    """Run a generation and shape it: `shape(completion, piece, done)` -> the object's own
    fields. hold: stream nothing before the end."""
    head = {"model": state.model_name}
    load = load_seconds(request)
    if stream:

        async def lines() -> AsyncIterator[dict[str, Any]]:
            c = generation.completions[0]
            async for _, out in generation.outputs():
                if out.finished:
                    yield {
                        **head,
                        "created_at": _now(),
                        **shape(c, out.text, True),
                        **_final(c, out.finish_reason, load),
                    }
                elif out.text and not hold:
                    yield {**head, "created_at": _now(), **shape(c, out.text, False), "done": False}

        return _ndjson(lines(), generation)
    async with generation:
        c = (await generation.run_to_end(request))[0]
    return JSONResponse({**head, "created_at": _now(), **shape(c, c.text, True), **_final(c, c.finish_reason, load)})


# ------------------------------------------------------------------------------- chat / generate


async def _unload_only(request: Request, body: dict[str, Any], empty: bool) -> str | None:
    """Ollama's way to unload a model: no prompt and "keep_alive": 0. Returns the model's name
    (unloaded once its running requests end), or None for any other request."""
    if not empty or "keep_alive" not in body or keep_alive_of(request.app.state.pool, body) != 0:
        return None
    pool = request.app.state.pool
    name = body.get("model")
    key: str | None = pool.resolve_loaded(name)
    if key is None:
        key = await asyncio.to_thread(pool.resolve, name)
    pool.unload(key)
    return key


@router.post("/api/chat", openapi_extra=request_body(OllamaChatRequest))
async def chat(request: Request) -> Any:
    body = await read_json_object(request)
    parse_body(OllamaChatRequest, body)
    messages = field(body, "messages", list, [])
    unloaded = await _unload_only(request, body, not messages)
    if unloaded is not None:
        return JSONResponse(
            {
                "model": unloaded,
                "created_at": _now(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "unload",
            }
        )
    state = await model_state(request, body.get("model"), body)
    _refuse_unsupported(body)
    stream = field(body, "stream", bool, True)
    if not messages:  # Ollama's way to load a model
        return JSONResponse(
            {
                "model": state.model_name,
                "created_at": _now(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "load",
            }
        )
    tools = field(body, "tools", list)
    messages = state.conversation(messages)
    # "collections": answer from documents (serving/rag_chat.py); None for every other request.
    rag = await rag_prompt(
        request, body, messages, field(field(body, "options", dict, {}), "num_predict", int, where="options.")
    )
    generation = await _start(state, body, encode_chat(state.tokenizer, rag.messages if rag else messages, tools=tools))

    def shape(c: Completion, piece: str, done: bool) -> dict[str, Any]:
        shaped = message_of(c, piece)
        if rag and done:  # an answer from collections lists its sources on its last object
            shaped["message"]["sources"] = rag.sources
        return shaped

    def message_of(c: Completion, piece: str) -> dict[str, Any]:
        if not tools:
            return {"message": {"role": "assistant", "content": piece}}
        text, calls = find_tool_calls(state.tokenizer, c.text, c.token_ids)  # done: c is whole
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = [
                {
                    "function": {
                        "name": call["function"]["name"],
                        "arguments": arguments_as_dict(call["function"]["arguments"]),
                    }
                }
                for call in calls
            ]
        return {"message": message}

    # With tools the text is held back to the end: a call is only known whole.
    return await _answer(request, state, generation, stream, shape, hold=bool(tools))


@router.post("/api/generate", openapi_extra=request_body(OllamaGenerateRequest))
async def generate(request: Request) -> Any:
    body = await read_json_object(request)
    parse_body(OllamaGenerateRequest, body)
    prompt = field(body, "prompt", str, "")
    unloaded = await _unload_only(request, body, not prompt)
    if unloaded is not None:
        return JSONResponse(
            {"model": unloaded, "created_at": _now(), "response": "", "done": True, "done_reason": "unload"}
        )
    state = await model_state(request, body.get("model"), body)
    _refuse_unsupported(body)
    system = field(body, "system", str)
    stream = field(body, "stream", bool, True)
    if not prompt:  # Ollama's way to load a model
        return JSONResponse(
            {"model": state.model_name, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
        )
    if field(body, "raw", bool, False):
        ids = encode_prompt(state.tokenizer, prompt)
    else:  # Ollama renders the prompt through the model's chat template
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = encode_chat(state.tokenizer, state.conversation(messages))
    generation = await _start(state, body, ids)
    return await _answer(request, state, generation, stream, lambda c, piece, done: {"response": piece})


@router.get("/api/version")
async def version() -> JSONResponse:
    return JSONResponse({"version": __version__})
