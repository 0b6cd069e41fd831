"""Responses kept for the server's lifetime, so a request can continue one by its id
(`previous_response_id`) and GET /v1/responses/{id} can return it. In memory and bounded: past
`max_responses`, the least recently used one is forgotten (a later request naming it gets
OpenAI's 400 previous_response_not_found), as a local server has no account to bill storage to."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from llamita.engine.conversation import Message

DEFAULT_MAX_RESPONSES = 512


@dataclass(frozen=True)
class StoredResponse:
    """A response object as it was sent, and the conversation it closes: every message before
    it (instructions excluded: OpenAI does not carry them over) and its own output."""

    response: dict[str, Any]
    messages: list[Message]


class ResponseHistory:
    """id -> StoredResponse, least recently used first. Used from the event loop's thread only."""

    def __init__(self, max_responses: int = DEFAULT_MAX_RESPONSES) -> None:
        self.max_responses = max_responses
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, response_id: str) -> StoredResponse | None:
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)
        return stored

    def put(self, response_id: str, stored: StoredResponse) -> None:
        self._items[response_id] = stored
        self._items.move_to_end(response_id)
        while len(self._items) > self.max_responses:
            self._items.popitem(last=False)

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id, None) is not None
