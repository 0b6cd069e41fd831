"""Answering a chat request from collections: `"collections": ["name", ...]` (and optionally
`"rag": {"top": 5, "mode": "hybrid", "language": "es"}`) on POST /v1/chat/completions or
/api/chat. The last user message is the query; the retrieved chunks go into the prompt as
numbered sources by the same builder `llamita ask` uses (rag/answer.py), and the response
carries them as `sources`. A request without "collections" does not come here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from llamita.api.llm import LLM
from llamita.engine.conversation import Message
from llamita.engine.threads import to_fresh_thread
from llamita.rag.answer import build_prompt
from llamita.rag.retrieval import Hit
from llamita.serving.collections import Collections
from llamita.serving.errors import APIError
from llamita.serving.state import server_state

DEFAULT_ANSWER_TOKENS = 512


def collections_of(request: Request) -> Collections:
    """The app's collections, made on first use from the engine loop and the data folder."""
    app_state = request.app.state
    if getattr(app_state, "collections", None) is None:
        app_state.collections = Collections(
            server_state(request).loop, app_state.chat_store.data_dir, asyncio.get_running_loop()
        )
    collections: Collections = app_state.collections
    return collections


@dataclass(frozen=True)
class RagOptions:
    collections: list[str]
    top: int = 5
    mode: str = "hybrid"
    language: str | None = None


@dataclass
class RagPrompt:
    """The messages to generate from and the sources they number ([1] is sources[0])."""

    messages: list[Message]
    sources: list[dict[str, Any]]


def rag_options(body: dict[str, Any]) -> RagOptions | None:
    """The request's "collections" and "rag" fields; None when it names no collections."""
    names = body.get("collections")
    if names is None:
        if body.get("rag") is not None:
            raise APIError(400, "'rag' needs 'collections': the collections to answer from", param="rag")
        return None
    options = body.get("rag") or {}  # types and ranges: the request models' (serving/protocol.py)
    top, mode, language = options.get("top") or 5, options.get("mode") or "hybrid", options.get("language")
    return RagOptions(list(dict.fromkeys(names)), top, mode, language)


def question_of(messages: list[Any]) -> tuple[str, list[Message]]:
    """(the last message's text, the messages before it); 400 unless the last is the user's."""
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "user":
        raise APIError(400, "with 'collections' the last message must be the user's question", param="messages")
    content = last.get("content")
    if isinstance(content, list):  # OpenAI's content parts: the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(content, str) or not content.strip():
        raise APIError(400, "with 'collections' the last message must hold the question's text", param="messages")
    if not all(isinstance(m, dict) for m in messages):
        raise APIError(400, "each message must be an object", param="messages")
    return content, messages[:-1]


def hit_of(source: dict[str, Any]) -> Hit:
    """A source as a response listed it, back as a Hit (for the glass view of an answer)."""
    return Hit(
        0,
        str(source.get("text", "")),
        str(source.get("source", "")),
        str(source.get("heading") or ""),
        source.get("page_start"),
        source.get("page_end"),
        float(source.get("score") or 0.0),
    )


async def rag_prompt(
    request: Request, body: dict[str, Any], messages: list[Any], answer_tokens: int | None
) -> RagPrompt | None:
    """The retrieval-augmented messages for a request with "collections"; None without."""
    options = rag_options(body)
    if options is None:
        return None
    question, history = question_of(messages)
    collections = collections_of(request)

    def work() -> RagPrompt:
        for name in options.collections:
            collections.open(name)  # 404 before searching any
        found = collections.search(options.collections, question, options.top, options.mode)
        engine = collections.loop.engine
        prompt = build_prompt(
            LLM.from_loaded(engine.loaded),
            question,
            [hit for _, hit in found],
            language=options.language,
            answer_tokens=answer_tokens if answer_tokens and answer_tokens > 0 else DEFAULT_ANSWER_TOKENS,
            history=history,
            context_length=engine.context_length,
        )
        kept = {id(hit) for hit in prompt.sources}
        listed = [collections.hit_json(name, hit) for name, hit in found if id(hit) in kept]
        return RagPrompt(prompt.messages, [{"index": i, **s} for i, s in enumerate(listed, start=1)])

    return await to_fresh_thread(work)
