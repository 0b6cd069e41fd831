"""Ollama's API: /api/chat and /api/generate (NDJSON streams unless "stream": false),
/api/tags, /api/show, /api/ps, /api/version.

Durations are nanoseconds, as Ollama reports them. The model is loaded before the server
starts, so load_duration is always 0 and a request with no prompt just answers "loaded".
"""

from __future__ import annotations

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
from llamita.jobs.model_info import FILE_TYPES
from llamita.sampling_params import SamplingParams
from llamita.serving.errors import APIError, api_error, not_supported
from llamita.serving.params import ollama_grammar, ollama_sampling_params
from llamita.serving.rag_chat import rag_prompt
from llamita.serving.request_body import field, read_json_object
from llamita.serving.request_completions import Completion, Generation
from llamita.serving.state import ServerState, model_request, server_state
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
    if isinstance(body.get("messages"), list) and any(isinstance(m, dict) and m.get("images")
                                                      for m in body["messages"]):
        raise not_supported("messages.images", "images")


def _fit(state: ServerState, prompt: list[int], params: SamplingParams,
         options: dict[str, Any]) -> SamplingParams:
    """Apply num_ctx: a window larger than the model's is clamped to it, a smaller one limits
    this request (prompt plus generated tokens). Without it, Ollama's default window (4096
    tokens, or $OLLAMA_CONTEXT_LENGTH) bounds the answer as it does in Ollama: a model caught
    in a loop stops with done_reason "length" instead of filling a 128k window for an hour. A
    prompt already longer than that default gets the model's whole window, not an error."""
    num_ctx = field(options, "num_ctx", int, where="options.")
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
        raise ContextOverflowError(f"the prompt has {n} tokens but num_ctx is {num_ctx} (prompt plus at "
                                   f"least one generated token): {n + 1 - num_ctx} too many")
    room = num_ctx - n
    return params.replace(max_tokens=room if params.max_tokens is None else min(params.max_tokens, room))


def default_num_ctx() -> int:
    """Ollama's default context window: $OLLAMA_CONTEXT_LENGTH, else 4096 (Ollama's default
    below 24 GiB of VRAM, and so on every CPU)."""
    value = os.environ.get("OLLAMA_CONTEXT_LENGTH", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_NUM_CTX


async def _start(state: ServerState, body: dict[str, Any], prompt: list[int]) -> Generation:
    options = field(body, "options", dict, {})
    params = _fit(state, prompt, ollama_sampling_params(options), options)
    params = params.replace(grammar=ollama_grammar(body.get("format")))
    return await Generation.start(state.loop, [prompt], [params], state.adapter_of(body))


def _final(state: ServerState, c: Completion, done_reason: str | None) -> dict[str, Any]:
    """The statistics Ollama puts on the last object of an answer."""
    end = c.finished_at or time.perf_counter()
    first = c.first_output_at or end
    return {"done": True, "done_reason": done_reason or "stop", "total_duration": _ns(end - c.started_at),
            "load_duration": 0, "prompt_eval_count": c.prompt_tokens,
            "prompt_eval_duration": _ns(first - c.started_at), "eval_count": c.completion_tokens,
            "eval_duration": _ns(end - first)}


def _ndjson(lines: AsyncIterator[dict[str, Any]], generation: Generation) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for line in lines:
                yield json.dumps(line, ensure_ascii=False) + "\n"
        except Exception as e:  # headers are sent: the error goes as the last line
            yield api_error(e).response().body.decode() + "\n"
        finally:  # also on a client disconnect: abort at once
            generation.close()

    return StreamingResponse(body(), media_type="application/x-ndjson")


async def _answer(request: Request, state: ServerState, generation: Generation, stream: bool,
                  shape: Any, *, hold: bool = False) -> Any:
    """Run a generation and shape it: `shape(completion, piece, done)` -> the object's own
    fields. hold: stream nothing before the end."""
    head = {"model": state.model_name}
    if stream:
        async def lines() -> AsyncIterator[dict[str, Any]]:
            c = generation.completions[0]
            async for _, out in generation.outputs():
                if out.finished:
                    yield {**head, "created_at": _now(), **shape(c, out.text, True), **_final(state, c, out.finish_reason)}
                elif out.text and not hold:
                    yield {**head, "created_at": _now(), **shape(c, out.text, False), "done": False}
        return _ndjson(lines(), generation)
    async with generation:
        c = (await generation.run_to_end(request))[0]
    return JSONResponse({**head, "created_at": _now(), **shape(c, c.text, True), **_final(state, c, c.finish_reason)})


# ------------------------------------------------------------------------------- chat / generate

@router.post("/api/chat")
async def chat(request: Request) -> Any:
    state, body = await model_request(request)
    _refuse_unsupported(body)
    messages = field(body, "messages", list, [])
    stream = field(body, "stream", bool, True)
    if not messages:  # Ollama's way to load a model
        return JSONResponse({"model": state.model_name, "created_at": _now(),
                             "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "load"})
    tools = field(body, "tools", list)
    # "collections": answer from documents (serving/rag_chat.py); None for every other request.
    rag = await rag_prompt(request, body, messages,
                           field(field(body, "options", dict, {}), "num_predict", int, where="options."))
    generation = await _start(state, body, encode_chat(state.tokenizer, rag.messages if rag else messages,
                                                       tools=tools))

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
            message["tool_calls"] = [{"function": {"name": call["function"]["name"],
                                                   "arguments": arguments_as_dict(call["function"]["arguments"])}}
                                     for call in calls]
        return {"message": message}

    # With tools the text is held back to the end: a call is only known whole.
    return await _answer(request, state, generation, stream, shape, hold=bool(tools))


@router.post("/api/generate")
async def generate(request: Request) -> Any:
    state, body = await model_request(request)
    _refuse_unsupported(body)
    prompt = field(body, "prompt", str, "")
    system = field(body, "system", str)
    stream = field(body, "stream", bool, True)
    if not prompt:  # Ollama's way to load a model
        return JSONResponse({"model": state.model_name, "created_at": _now(), "response": "", "done": True,
                             "done_reason": "load"})
    if field(body, "raw", bool, False):
        ids = encode_prompt(state.tokenizer, prompt)
    else:  # Ollama renders the prompt through the model's chat template
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = encode_chat(state.tokenizer, messages)
    generation = await _start(state, body, ids)
    return await _answer(request, state, generation, stream,
                         lambda c, piece, done: {"response": piece})


# ------------------------------------------------------------------------------- model listing

def _details(state: ServerState) -> dict[str, Any]:
    meta = state.loaded.metadata
    file_type = meta.get("general.file_type")
    return {"parent_model": "", "format": state.loaded.format, "family": state.loaded.config.architecture,
            "families": [state.loaded.config.architecture],
            "parameter_size": meta.get("general.size_label") or f"{state.loaded.config.n_params() / 1e6:.0f}M",
            "quantization_level": FILE_TYPES.get(file_type, str(state.loaded.dtype).removeprefix("torch."))}


def _size(state: ServerState) -> int:
    path = state.loaded.path
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _modified(state: ServerState) -> str:
    return datetime.fromtimestamp(state.loaded.path.stat().st_mtime, timezone.utc).isoformat()


def _model_entries(state: ServerState) -> list[dict[str, Any]]:
    """The served model, then base+NAME for each LoRA adapter (what a request's `model` may
    name), so that Ollama clients such as Open WebUI offer the adapters in their model list.
    An adapter's details name the base as its parent_model, as Ollama's do for a model made
    FROM another."""
    modified, size = _modified(state), _size(state)
    entries = []
    for name in state.model_names():
        details = _details(state)
        if name != state.model_name:
            details["parent_model"] = state.model_name
        entries.append({"name": name, "model": name, "modified_at": modified, "size": size,
                        "details": details})
    return entries


@router.get("/api/tags")
async def tags(request: Request) -> JSONResponse:
    return JSONResponse({"models": _model_entries(server_state(request))})


@router.get("/api/ps")
async def ps(request: Request) -> JSONResponse:
    """Every name of /api/tags: the adapters are held in memory with the base, never unloaded."""
    state = server_state(request)
    entries = _model_entries(state)
    for entry in entries:
        entry.pop("modified_at")
        entry.update(expires_at="0001-01-01T00:00:00Z", context_length=state.context_length,
                     size_vram=entry["size"] if state.loaded.device.type == "cuda" else 0)
    return JSONResponse({"models": entries})


@router.post("/api/show")
async def show(request: Request) -> JSONResponse:
    state = server_state(request)
    body = await read_json_object(request)
    state.check_model(body.get("model") or body.get("name"))
    meta = state.loaded.metadata
    info = {k: v for k, v in meta.items() if not k.startswith("tokenizer.") and isinstance(v, (str, int, float, bool))}
    return JSONResponse({"modelfile": "", "parameters": "", "template": meta.get("tokenizer.chat_template", ""),
                         "details": _details(state), "model_info": info,
                         "capabilities": ["completion", "tools"],
                         "modified_at": _modified(state)})


@router.get("/api/version")
async def version() -> JSONResponse:
    return JSONResponse({"version": __version__})
