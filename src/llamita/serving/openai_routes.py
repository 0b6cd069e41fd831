"""POST /v1/chat/completions and POST /v1/completions, whole or streamed as server-sent events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from llamita.engine.llm_engine import RequestOutput
from llamita.engine.prompts import encode_chat, encode_prompt
from llamita.engine.scoring import prompt_logprobs
from llamita.engine.tool_grammar import tool_call_grammar
from llamita.errors import InvalidParameterError
from llamita.sampling_params import Grammar
from llamita.serving import openai_format as fmt
from llamita.serving.errors import APIError, api_error, not_supported
from llamita.serving.openapi import answer, request_body
from llamita.serving.params import (
    choice_count,
    openai_grammar,
    openai_sampling_params,
    per_choice,
)
from llamita.serving.protocol import ChatCompletion, ChatCompletionRequest, CompletionRequest, TextCompletion
from llamita.serving.rag_chat import rag_prompt
from llamita.serving.request_body import field
from llamita.serving.request_completions import Completion, Generation
from llamita.serving.state import ServerState, model_request
from llamita.tokenizer.tool_call_stream import ToolCallDelta, ToolCallStream
from llamita.tokenizer.tool_calls import PYTHON_TAG, find_tool_calls

router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _refuse_unsupported(body: dict[str, Any], *, chat: bool) -> None:
    if not chat:
        if body.get("echo") and body.get("stream"):
            raise not_supported("echo", "echo with stream: true")
        if body.get("suffix"):
            raise not_supported("suffix", "insertion (a suffix after the completion)")
        if field(body, "best_of", int, 1) != 1:
            raise not_supported("best_of", "best_of > 1")


def _prefill(body: dict[str, Any]) -> bool:
    """vLLM's assistant prefill: `continue_final_message: true` continues the last (assistant)
    message instead of starting a new turn; it goes with `add_generation_prompt: false`, the
    only other value of that field that means something here."""
    prefill: bool = field(body, "continue_final_message", bool, False)
    if field(body, "add_generation_prompt", bool, not prefill) == prefill:
        what = "true with continue_final_message" if prefill else "false without continue_final_message"
        raise APIError(
            400,
            f"'add_generation_prompt' {what} has no meaning: continue the final message or start a new turn",
            param="add_generation_prompt",
        )
    return prefill


def _stream_options(body: dict[str, Any]) -> bool:
    """include_usage of stream_options (only meaningful with stream: true)."""
    options = field(body, "stream_options", dict, {})
    return bool(field(options, "include_usage", bool, False, where="stream_options."))


def offered_tools(state: ServerState, body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, Grammar | None]:
    """The tools to offer the model, after tool_choice, and the grammar that forces a call
    ("required", or a named function {"type": "function", "function": {"name": ...}})."""
    tools = field(body, "tools", list)
    choice = body.get("tool_choice")
    if choice in (None, "auto"):
        return tools or None, None
    if choice == "none":  # the caller forbids calls: do not even show the tools to the model
        return None, None
    if choice == "required" or isinstance(choice, dict):
        name = None
        if isinstance(choice, dict):
            name = field(
                field(choice, "function", dict, required=True, where="tool_choice."),
                "name",
                str,
                required=True,
                where="tool_choice.function.",
            )
        if not tools:
            raise APIError(400, "'tool_choice' asks for a tool call but no 'tools' are given", param="tool_choice")
        if openai_grammar(body) is not None:
            raise APIError(
                400,
                "'tool_choice' forcing a call cannot be combined with 'response_format' or 'grammar'",
                param="tool_choice",
            )
        try:
            return tools, tool_call_grammar(state.tokenizer, tools, name)
        except InvalidParameterError as e:
            raise APIError(400, str(e), param="tool_choice") from None
    raise APIError(
        400, f"'tool_choice' must be 'none', 'auto', 'required' or a function, got {choice!r}", param="tool_choice"
    )


async def start_generation(
    state: ServerState, prompts: list[list[int]], body: dict[str, Any], *, chat: bool, grammar: Grammar | None = None
) -> Generation:
    """n choices of each prompt, in the order prompt 0 choice 0, prompt 0 choice 1, ...
    `grammar` (a forced tool call) replaces the body's own."""
    params = openai_sampling_params(body, chat=chat, defaults=state.sampling_defaults)
    if grammar is not None:
        params = params.replace(grammar=grammar)
    n = choice_count(body)
    prompt_list = [p for p in prompts for _ in range(n)]
    return await Generation.start(state.loop, prompt_list, per_choice(params, n) * len(prompts), state.adapter_of(body))


def _event_stream(events: AsyncIterator[str], generation: Generation) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except Exception as e:  # headers are sent: the error goes as an event, then the end
            yield fmt.sse(api_error(e).body_text())
        finally:  # also on a client disconnect (the task is cancelled): abort at once
            generation.close()
        yield fmt.sse("[DONE]")

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


# ------------------------------------------------------------------------------- chat


@router.post(
    "/v1/chat/completions", openapi_extra=request_body(ChatCompletionRequest), responses=answer(ChatCompletion)
)
async def chat_completions(request: Request) -> Any:
    state, body = await model_request(request, ChatCompletionRequest)
    _refuse_unsupported(body, chat=True)
    tools, call_grammar = offered_tools(state, body)
    messages = state.conversation(field(body, "messages", list, required=True))
    # "collections": answer from documents (serving/rag_chat.py); None for every other request.
    rag = await rag_prompt(request, body, messages, _max_tokens(body))
    prompt = encode_chat(
        state.tokenizer, rag.messages if rag else messages, tools=tools, continue_final_message=_prefill(body)
    )
    stream = field(body, "stream", bool, False)
    include_usage = _stream_options(body)
    generation = await start_generation(state, [prompt], body, chat=True, grammar=call_grammar)
    sources = rag.sources if rag else None
    if stream:
        return _event_stream(_chat_events(state, generation, bool(tools), include_usage, sources), generation)
    async with generation:
        completions = await generation.run_to_end(request)
    choices = []
    for c in completions:
        text, calls = find_tool_calls(state.tokenizer, c.text, c.token_ids) if tools else (c.text, [])
        message = fmt.chat_message(text, calls)
        if sources is not None:
            message["sources"] = sources
        choices.append(
            {
                "index": c.index,
                "message": message,
                "logprobs": _chat_logprobs(state, body, c),
                "finish_reason": "tool_calls" if calls else c.finish_reason,
            }
        )
    return JSONResponse(
        fmt.response("chat.completion", fmt.new_id("chatcmpl"), state.model_name, choices, fmt.usage(completions))
    )


def _chat_logprobs(state: ServerState, body: dict[str, Any], c: Completion) -> dict[str, Any] | None:
    return fmt.chat_logprobs(state.tokenizer, c.logprobs) if body.get("logprobs") else None


def _max_tokens(body: dict[str, Any]) -> int | None:
    limit: int | None = field(body, "max_completion_tokens", int) or field(body, "max_tokens", int)
    return limit


async def _chat_events(
    state: ServerState,
    generation: Generation,
    tools: bool,
    include_usage: bool,
    sources: list[dict[str, Any]] | None = None,
) -> AsyncIterator[str]:
    response_id, created, model = fmt.new_id("chatcmpl"), int(time.time()), state.model_name

    def event(
        index: int, delta: dict[str, Any], finish: str | None = None, logprobs: dict[str, Any] | None = None
    ) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return fmt.sse(fmt.chunk("chat.completion.chunk", response_id, model, created, [choice], include_usage))

    for i in range(len(generation.streams)):
        yield event(i, {"role": "assistant", "content": ""})
    called = [False] * len(generation.streams)
    async for i, out, text, deltas in answer_pieces(state, generation, tools):
        logprobs = _new_logprobs(state, generation.completions[i], out)
        if text or logprobs:
            yield event(i, {"content": text}, logprobs=logprobs)
        if deltas:
            called[i] = True
            yield event(i, {"tool_calls": [d.as_openai() for d in deltas]})
        if out.finished:  # an answer from collections lists its sources on its last chunk
            yield event(
                i, {} if sources is None else {"sources": sources}, "tool_calls" if called[i] else out.finish_reason
            )
    if include_usage:
        yield fmt.sse(
            {
                **fmt.chunk("chat.completion.chunk", response_id, model, created, [], False),
                "usage": fmt.usage(generation.completions),
            }
        )


async def answer_pieces(
    state: ServerState, generation: Generation, tools: bool
) -> AsyncIterator[tuple[int, RequestOutput, str, list[ToolCallDelta]]]:
    """(choice index, output, content to show, tool-call deltas) as the answers grow. With
    tools, text that may be a call is held back until it is known not to be one, and calls
    come as deltas: id and name first, then pieces of the arguments."""
    calls = [ToolCallStream() for _ in generation.streams] if tools else []
    python_tag = state.tokenizer.token_to_id(PYTHON_TAG)
    async for i, out in generation.outputs():
        text = out.text
        deltas: list[ToolCallDelta] = []
        if tools:
            text, deltas = calls[i].feed(out.text, python_tag=python_tag in out.token_ids)
            if out.finished:
                c = generation.completions[i]
                rest, more = calls[i].finish(*find_tool_calls(state.tokenizer, c.text, c.token_ids))
                text, deltas = text + rest, deltas + more
        yield i, out, text, deltas


def _new_logprobs(state: ServerState, c: Completion, out: RequestOutput) -> dict[str, Any] | None:
    if not out.logprobs or not out.token_ids:
        return None
    return fmt.chat_logprobs(state.tokenizer, c.logprobs[-len(out.token_ids) :])


# ------------------------------------------------------------------------------- completions


def prompt_id_lists(state: ServerState, value: Any, param: str = "prompt") -> list[list[int]]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids (the
    shapes OpenAI takes for completion prompts and embedding inputs) -> token id lists."""

    def is_ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(value, str):
        return [encode_prompt(state.tokenizer, value)]
    if is_ids(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return [encode_prompt(state.tokenizer, p) for p in value]
    if isinstance(value, list) and value and all(is_ids(p) for p in value):
        return list(value)
    raise APIError(
        400,
        f"'{param}' must be a string, a list of strings, a list of token ids or a list of lists of token ids",
        param=param,
    )


@router.post("/v1/completions", openapi_extra=request_body(CompletionRequest), responses=answer(TextCompletion))
async def completions(request: Request) -> Any:
    state, body = await model_request(request, CompletionRequest)
    _refuse_unsupported(body, chat=False)
    prompts = prompt_id_lists(state, body["prompt"])
    stream = field(body, "stream", bool, False)
    include_usage = _stream_options(body)
    wants_logprobs = body.get("logprobs") is not None
    if field(body, "echo", bool, False):
        return await _echo_completions(request, state, prompts, body, wants_logprobs)
    generation = await start_generation(state, prompts, body, chat=False)
    if stream:
        return _event_stream(
            _completion_events(state, generation, len(prompts), wants_logprobs, include_usage), generation
        )
    async with generation:
        done = await generation.run_to_end(request)
    choices = [
        {
            "index": c.index,
            "text": c.text,
            "finish_reason": c.finish_reason,
            "logprobs": fmt.completion_logprobs(state.tokenizer, c.logprobs) if wants_logprobs else None,
        }
        for c in done
    ]
    return JSONResponse(
        fmt.response("text_completion", fmt.new_id("cmpl"), state.model_name, choices, fmt.usage(done, len(prompts)))
    )


async def _echo_completions(
    request: Request, state: ServerState, prompts: list[list[int]], body: dict[str, Any], wants_logprobs: bool
) -> JSONResponse:
    """echo: true — each choice's text starts with its prompt, and with logprobs the prompt
    tokens are scored too (the first has no context: null), as evaluation harnesses need.
    max_tokens 0 scores the prompt without generating."""
    top = body["logprobs"] if wants_logprobs else 0
    n = choice_count(body)
    scored = await state.loop.call(
        lambda engine: (
            [prompt_logprobs(engine.model, ids, engine.vocab_size, top) for ids in prompts] if wants_logprobs else []
        )
    )
    if field(body, "max_tokens", int) == 0:
        done = [
            Completion(index=i, finish_reason="length", prompt_tokens=len(prompts[i // n]))
            for i in range(n * len(prompts))
        ]
    else:
        generation = await start_generation(state, prompts, body, chat=False)
        async with generation:
            done = await generation.run_to_end(request)
    choices = []
    for c in done:
        ids = prompts[c.index // n]
        prompt_text = state.tokenizer.decode(ids)
        logprobs = None
        if wants_logprobs:
            logprobs = fmt.echo_logprobs(state.tokenizer, ids, scored[c.index // n])
            tail = fmt.completion_logprobs(state.tokenizer, c.logprobs, len(prompt_text))
            for key in logprobs:
                logprobs[key] += tail[key]
        choices.append(
            {"index": c.index, "text": prompt_text + c.text, "finish_reason": c.finish_reason, "logprobs": logprobs}
        )
    return JSONResponse(
        fmt.response("text_completion", fmt.new_id("cmpl"), state.model_name, choices, fmt.usage(done, len(prompts)))
    )


async def _completion_events(
    state: ServerState, generation: Generation, n_prompts: int, wants_logprobs: bool, include_usage: bool
) -> AsyncIterator[str]:
    response_id, created, model = fmt.new_id("cmpl"), int(time.time()), state.model_name
    offsets = [0] * len(generation.streams)  # characters of each choice's text sent so far
    async for i, out in generation.outputs():
        c = generation.completions[i]
        logprobs = None
        if wants_logprobs and out.token_ids:
            logprobs = fmt.completion_logprobs(state.tokenizer, c.logprobs[-len(out.token_ids) :], offsets[i])
            offsets[i] = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
        if out.text or logprobs or out.finished:
            choice = {"index": i, "text": out.text, "logprobs": logprobs, "finish_reason": out.finish_reason}
            yield fmt.sse(fmt.chunk("text_completion", response_id, model, created, [choice], include_usage))
    if include_usage:
        yield fmt.sse(
            {
                **fmt.chunk("text_completion", response_id, model, created, [], False),
                "usage": fmt.usage(generation.completions, n_prompts),
            }
        )
