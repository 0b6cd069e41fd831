"""OpenAI's Responses API: POST /v1/responses (whole, or streamed as named events), and
GET / DELETE /v1/responses/{id} for the responses this server keeps (response_history.py).

A request becomes a chat completion: `instructions` a system message first, the conversation
of `previous_response_id` next, then `input`; tools and tool_choice, text.format and the
sampling fields take chat's route through offered_tools and start_generation, so both APIs give
the same answer to the same conversation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from llamita.engine.conversation import Message
from llamita.engine.prompts import encode_chat
from llamita.serving.errors import APIError, api_error, validation_error
from llamita.serving.openai_routes import (
    SSE_HEADERS,
    answer_pieces,
    offered_tools,
    start_generation,
)
from llamita.serving.openapi import request_body
from llamita.serving.request_body import read_json_object
from llamita.serving.request_completions import Completion, Generation
from llamita.serving.response_history import StoredResponse
from llamita.serving.responses_format import (
    ResponseBuilder,
    new_id,
    response_object,
    sse_event,
)
from llamita.serving.responses_request import ResponsesRequest, input_messages
from llamita.serving.state import ServerState, model_state, server_state
from llamita.tokenizer.tool_call_stream import ToolCallDelta
from llamita.tokenizer.tool_calls import find_tool_calls

router = APIRouter()


def _earlier_messages(state: ServerState, body: ResponsesRequest) -> list[Message]:
    """The conversation `previous_response_id` closes; 400 (OpenAI's answer) for an id this
    server does not hold: never stored, forgotten, or from before a restart."""
    if body.previous_response_id is None:
        return []
    stored = state.responses.get(body.previous_response_id)
    if stored is None:
        raise APIError(
            400,
            f"previous response with id '{body.previous_response_id}' not found; this "
            "server keeps stored responses in memory, for its lifetime",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return list(stored.messages)


class _Run:
    """One /v1/responses request on its way: the conversation, the generation and the builder."""

    def __init__(
        self,
        state: ServerState,
        body: ResponsesRequest,
        conversation: list[Message],
        generation: Generation,
        tools: bool,
    ) -> None:
        self.state, self.body, self.conversation = state, body, conversation
        self.generation, self.tools = generation, tools
        self.response_id = new_id("resp")
        self.builder = ResponseBuilder(response_object(self.response_id, body, state.model_name))

    def finish(self, completion: Completion) -> list[dict[str, Any]]:
        """Close the response and keep it (store: true)."""
        status = "incomplete" if completion.finish_reason == "length" else "completed"
        events = self.builder.finish(completion, status)
        if self.body.store:
            self.state.responses.put(
                self.response_id, StoredResponse(self.builder.response, [*self.conversation, self.builder.as_message()])
            )
        return events

    async def whole(self, request: Request) -> dict[str, Any]:
        async with self.generation:
            (completion,) = await self.generation.run_to_end(request)
        text, calls = (
            find_tool_calls(self.state.tokenizer, completion.text, completion.token_ids)
            if self.tools
            else (completion.text, [])
        )
        self.builder.add_text(text)
        for call in calls:
            fn = call["function"]
            self.builder.add_call(ToolCallDelta(0, fn["arguments"], call["id"], fn["name"]))
        self.finish(completion)
        return self.builder.response

    async def events(self) -> AsyncIterator[str]:
        for event in self.builder.start():
            yield sse_event(event)
        try:
            async for _, out, text, deltas in answer_pieces(self.state, self.generation, self.tools):
                events = self.builder.add_text(text) if text else []
                for delta in deltas:
                    events += self.builder.add_call(delta)
                if out.finished:
                    events += self.finish(self.generation.completions[0])
                for event in events:
                    yield sse_event(event)
        except Exception as e:  # headers are sent: the error goes as the API's error event
            yield sse_event(self.builder.error(api_error(e)))
        finally:  # also on a client disconnect (the task is cancelled): abort at once
            self.generation.close()


async def _read_body(request: Request) -> ResponsesRequest:
    """The body, validated against ResponsesRequest. Read as the other routes read theirs (any
    content type, the same JSON errors), not by FastAPI, which wants application/json."""
    raw = await read_json_object(request)
    try:
        return ResponsesRequest.model_validate(raw)
    except ValidationError as e:
        raise validation_error(e.errors(), raw, prefix=()) from None


@router.post("/v1/responses", openapi_extra=request_body(ResponsesRequest))
async def create_response(request: Request) -> Any:
    body = await _read_body(request)
    state = await model_state(request, body.model)
    earlier = _earlier_messages(state, body)
    conversation = earlier + input_messages(body.input, earlier)
    messages = ([{"role": "system", "content": body.instructions}] if body.instructions else []) + conversation
    chat_body = {
        "model": body.model,
        "messages": messages,
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "response_format": body.response_format(),
        **body.chat_tools(),
    }
    tools, call_grammar = offered_tools(state, chat_body)
    prompt = encode_chat(state.tokenizer, messages, tools=tools)
    generation = await start_generation(state, [prompt], chat_body, chat=True, grammar=call_grammar)
    run = _Run(state, body, conversation, generation, bool(tools))
    if body.stream:
        return StreamingResponse(run.events(), media_type="text/event-stream", headers=SSE_HEADERS)
    return JSONResponse(await run.whole(request))


def _stored(state: ServerState, response_id: str) -> StoredResponse:
    stored = state.responses.get(response_id)
    if stored is None:
        raise APIError(
            404,
            f"no response with id '{response_id}' (responses are kept in memory, only those created with store: true)",
            param="response_id",
            code="not_found",
        )
    return stored


@router.get("/v1/responses/{response_id}")
async def get_response(request: Request, response_id: str) -> JSONResponse:
    return JSONResponse(_stored(server_state(request), response_id).response)


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> JSONResponse:
    state = server_state(request)
    _stored(state, response_id)
    state.responses.delete(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
