"""The web chat: the page at / (with /static/...) and the JSON routes under /ui/ that keep its
conversations and feedback in the ChatStore. The page streams answers from /v1/chat/completions
itself, then saves the user's message and the finished answer here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from llamita.serving.errors import APIError
from llamita.serving.request_body import field, read_json_object
from llamita.serving.store import ROLES, ChatStore

STATIC_DIR = Path(__file__).parent / "static"
# What a conversation keeps of its settings, with each one's JSON type. `model` is the name the
# page sends as the request's "model": the base, or "<base>+NAME" for a LoRA adapter.
PARAM_TYPES: dict[str, type] = {"temperature": float, "top_p": float, "top_k": int, "max_tokens": int, "model": str}

router = APIRouter()


def chat_store(request: Request) -> ChatStore:
    store: ChatStore = request.app.state.chat_store
    return store


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    """What a browser asks for where a page names no icon (the JSON routes, /metrics)."""
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


@router.get("/ui/conversations")
async def list_conversations(request: Request) -> JSONResponse:
    return JSONResponse({"data": await run_in_threadpool(chat_store(request).list_conversations)})


@router.post("/ui/conversations")
async def create_conversation(request: Request) -> JSONResponse:
    fields = _conversation_fields(await read_json_object(request))
    conversation = await run_in_threadpool(chat_store(request).create_conversation, **fields)
    return JSONResponse(conversation, status_code=201)


@router.get("/ui/conversations/{conversation_id}")
async def get_conversation(request: Request, conversation_id: str) -> JSONResponse:
    return JSONResponse(await _existing(request, conversation_id))


@router.patch("/ui/conversations/{conversation_id}")
async def update_conversation(request: Request, conversation_id: str) -> JSONResponse:
    fields = _conversation_fields(await read_json_object(request))
    if not await run_in_threadpool(chat_store(request).update_conversation, conversation_id, **fields):
        raise _no_conversation(conversation_id)
    return JSONResponse(await _existing(request, conversation_id))


@router.delete("/ui/conversations/{conversation_id}")
async def delete_conversation(request: Request, conversation_id: str) -> Response:
    if not await run_in_threadpool(chat_store(request).delete_conversation, conversation_id):
        raise _no_conversation(conversation_id)
    return Response(status_code=204)


@router.post("/ui/conversations/{conversation_id}/messages")
async def add_message(request: Request, conversation_id: str) -> JSONResponse:
    """{"role": "user" | "assistant" | "system", "content": text, "tokens_per_second": number?,
    "model": the model name that wrote an answer?, "sources": an answer from documents' list of
    numbered sources?}."""
    body = await read_json_object(request)
    role = field(body, "role", str, required=True)
    if role not in ROLES:
        raise APIError(400, f"'role' must be one of {', '.join(ROLES)}, got {role!r}", param="role")
    content = field(body, "content", str, required=True)
    speed = field(body, "tokens_per_second", float)
    if speed is not None and speed < 0:
        raise APIError(400, "'tokens_per_second' must be >= 0", param="tokens_per_second")
    model = field(body, "model", str)
    sources = field(body, "sources", list)
    if sources is not None and not all(isinstance(s, dict) for s in sources):
        raise APIError(400, "'sources' must be a list of objects (a chat answer's sources)", param="sources")
    message = await run_in_threadpool(
        chat_store(request).add_message, conversation_id, role, content, speed, model, sources
    )
    if message is None:
        raise _no_conversation(conversation_id)
    return JSONResponse(message, status_code=201)


@router.delete("/ui/conversations/{conversation_id}/messages/{message_id}")
async def truncate_conversation(request: Request, conversation_id: str, message_id: int) -> Response:
    """Deletes the message and every later one (regenerate, edit-and-resend)."""
    if not await run_in_threadpool(chat_store(request).truncate_conversation, conversation_id, message_id):
        raise APIError(404, f"conversation '{conversation_id}' has no message {message_id}", code="message_not_found")
    return Response(status_code=204)


@router.put("/ui/messages/{message_id}/feedback")
async def set_feedback(request: Request, message_id: int) -> JSONResponse:
    """{"rating": 1 | -1, "comment": text?}; replaces an earlier rating of the same answer."""
    body = await read_json_object(request)
    rating = field(body, "rating", int, required=True)
    if rating not in (1, -1):
        raise APIError(400, f"'rating' must be 1 (thumbs up) or -1 (thumbs down), got {rating}", param="rating")
    comment = field(body, "comment", str, "")
    store = chat_store(request)
    role = await run_in_threadpool(store.message_role, message_id)
    if role is None:
        raise APIError(404, f"there is no message {message_id}", code="message_not_found")
    if role != "assistant":
        raise APIError(400, f"only answers take feedback; message {message_id} is a {role} message")
    await run_in_threadpool(store.set_feedback, message_id, rating, comment)
    return JSONResponse({"message_id": message_id, "rating": rating, "comment": comment})


@router.get("/ui/feedback.jsonl")
async def export_feedback(request: Request) -> StreamingResponse:
    lines = await run_in_threadpool(lambda: list(chat_store(request).export_feedback()))
    return StreamingResponse(
        iter(lines),
        media_type="application/jsonl",
        headers={"Content-Disposition": 'attachment; filename="feedback.jsonl"'},
    )


def _conversation_fields(body: dict[str, Any]) -> dict[str, Any]:
    """title, system_prompt and params from a request body (absent ones left out)."""
    fields = {"title": field(body, "title", str), "system_prompt": field(body, "system_prompt", str)}
    params = field(body, "params", dict)
    if params is not None:
        unknown = sorted(set(params) - set(PARAM_TYPES))
        if unknown:
            raise APIError(
                400, f"'params' takes {', '.join(PARAM_TYPES)}; unknown: {', '.join(unknown)}", param="params"
            )
        for name, kind in PARAM_TYPES.items():
            field(params, name, kind, where="params.")
        fields["params"] = params
    return {k: v for k, v in fields.items() if v is not None}


async def _existing(request: Request, conversation_id: str) -> dict[str, Any]:
    conversation = await run_in_threadpool(chat_store(request).get_conversation, conversation_id)
    if conversation is None:
        raise _no_conversation(conversation_id)
    return conversation


def _no_conversation(conversation_id: str) -> APIError:
    return APIError(404, f"there is no conversation '{conversation_id}'", code="conversation_not_found")
