"""Response objects of OpenAI's Responses API and the server-sent events that build them, from
the pieces of an answer (text, tool-call deltas). One builder serves both forms: a whole answer
is fed in one piece and its events are dropped. Pure: no I/O, no engine.

Event names and order are the API's (openai SDK `types/responses/response_stream_event.py`):
response.created, response.in_progress, then per output item output_item.added, for a message
content_part.added, output_text.delta..., output_text.done, content_part.done, for a function
call function_call_arguments.delta..., function_call_arguments.done; then output_item.done; last
response.completed (response.incomplete when max_output_tokens cut it). Every event carries a
sequence_number counting from 0.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from llamita.engine.conversation import Message
from llamita.serving.errors import APIError
from llamita.serving.request_completions import Completion
from llamita.serving.responses_request import ResponsesRequest
from llamita.tokenizer.tool_call_stream import ToolCallDelta
from llamita.tokenizer.tool_calls import ToolCall

Event = dict[str, Any]


def new_id(prefix: str) -> str:
    """OpenAI's ids here: resp_, msg_ and fc_ followed by hex."""
    return f"{prefix}_{secrets.token_hex(16)}"


def sse_event(event: Event) -> str:
    """One event with its name, as the Responses API sends them."""
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


def response_usage(completion: Completion) -> dict[str, Any]:
    prompt, output = completion.prompt_tokens, completion.completion_tokens
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "total_tokens": prompt + output,
        "input_tokens_details": {"cached_tokens": completion.cached_tokens, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def response_object(response_id: str, body: ResponsesRequest, model: str) -> dict[str, Any]:
    """The response as it starts (in_progress, no output): what the request asked, echoed."""
    text_format = body.text.format if body.text and body.text.format else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": model,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "previous_response_id": body.previous_response_id,
        "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tools": [t.model_dump(exclude_none=True) for t in body.tools],
        "tool_choice": body.tool_choice if isinstance(body.tool_choice, str) else body.tool_choice.model_dump(),
        "parallel_tool_calls": True,
        "truncation": "disabled",
        "store": body.store,
        "text": {
            "format": text_format.model_dump(by_alias=True, exclude_none=True) if text_format else {"type": "text"}
        },
        "metadata": body.metadata or {},
        "user": body.user,
        "usage": None,
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponseBuilder:
    """The output items of one response as its pieces arrive, and the events announcing them.
    Each method returns the events it caused, in order."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.sequence_number = 0
        self._message: dict[str, Any] | None = None  # the message item being written
        self._call: dict[str, Any] | None = None  # the function call item being written
        self._space = ""  # whitespace held until it is known to begin a message
        self.text = ""  # all the message text
        self.calls: list[ToolCall] = []  # chat-style, for the stored conversation

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = json.loads(json.dumps(self.response))  # as it is now, not as it ends
        return snapshot

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response=self._snapshot()),
            self._event("response.in_progress", response=self._snapshot()),
        ]

    def add_text(self, piece: str) -> list[Event]:
        """More of the answer's text. Whitespace alone (before a tool call, say) opens no message."""
        if self._message is None and not (self._space + piece).strip():
            self._space += piece
            return []
        events = self._close_call() if self._message is None else []
        if self._message is None:
            piece, self._space = self._space + piece, ""
            events += self._open_message()
        assert self._message is not None
        self._message["content"][0]["text"] += piece
        self.text += piece
        return events + [self._event("response.output_text.delta", **self._where(), delta=piece, logprobs=[])]

    def add_call(self, delta: ToolCallDelta) -> list[Event]:
        """A piece of a tool call: the first piece of a call (with its id) opens its item."""
        events: list[Event] = []
        if delta.id is not None:
            events += self._close_message() + self._close_call()
            self._call = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": delta.id,
                "name": delta.name,
                "arguments": "",
            }
            self.response["output"].append(self._call)
            events.append(self._event("response.output_item.added", output_index=self._index(), item=dict(self._call)))
        if delta.arguments and self._call is not None:
            self._call["arguments"] += delta.arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self._call["id"],
                    output_index=self._index(),
                    delta=delta.arguments,
                )
            )
        return events

    def finish(self, completion: Completion, status: str) -> list[Event]:
        """Close every open item and the response; `status` is "completed" or "incomplete"."""
        events = self._close_call()
        if self._message is None and not self.calls:  # a response always says something
            events += self._open_message()
        events += self._close_message(status)
        self.response.update(status=status, usage=response_usage(completion))
        if status == "incomplete":
            self.response["incomplete_details"] = {"reason": "max_output_tokens"}
        return events + [self._event(f"response.{status}", response=self._snapshot())]

    def error(self, error: APIError) -> Event:
        """The event that ends a stream that failed after it began."""
        return self._event("error", code=error.code, message=error.message, param=error.param)

    def as_message(self) -> Message:
        """This response's output as a chat message, to continue the conversation from."""
        message: Message = {"role": "assistant", "content": self.text}
        if self.calls:
            message["tool_calls"] = self.calls
        return message

    # -------------------------------------------------------------------------- items

    def _index(self) -> int:
        return len(self.response["output"]) - 1

    def _where(self, message: dict[str, Any] | None = None) -> dict[str, Any]:
        """Where a message's text events point: the open message unless told."""
        message = message or self._message
        assert message is not None
        return {"item_id": message["id"], "output_index": self.response["output"].index(message), "content_index": 0}

    def _open_message(self) -> list[Event]:
        self._message = {
            "id": new_id("msg"),
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        self.response["output"].append(self._message)
        added = self._event(
            "response.output_item.added", output_index=self._index(), item=json.loads(json.dumps(self._message))
        )
        self._message["content"].append(_output_text(""))
        return [added, self._event("response.content_part.added", **self._where(), part=_output_text(""))]

    def _close_message(self, status: str = "completed") -> list[Event]:
        message, self._message = self._message, None
        if message is None:
            return []
        where = self._where(message)
        part = message["content"][0]
        message["status"] = status
        return [
            self._event("response.output_text.done", **where, text=part["text"], logprobs=[]),
            self._event("response.content_part.done", **where, part=dict(part)),
            self._event(
                "response.output_item.done", output_index=where["output_index"], item=json.loads(json.dumps(message))
            ),
        ]

    def _close_call(self) -> list[Event]:
        call, self._call = self._call, None
        if call is None:
            return []
        call["status"] = "completed"
        self.calls.append(
            {
                "id": call["call_id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
        )
        index = self.response["output"].index(call)
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=call["id"],
                output_index=index,
                arguments=call["arguments"],
            ),
            self._event("response.output_item.done", output_index=index, item=dict(call)),
        ]
