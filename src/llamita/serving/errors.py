"""Every error the server answers, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Typed llamita errors map to a status here, in one place, so a route only raises."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from llamita.errors import (
    ContextOverflowError,
    InvalidParameterError,
    LlamitaError,
    TemplateError,
)
from llamita.serving.engine_loop import (
    EngineFailure,
    QueueFullError,
    RequestTimeoutError,
    ServerShuttingDownError,
)

log = logging.getLogger(__name__)

# Seconds a client is told to wait when the queue is full.
RETRY_AFTER_SECONDS = 1

_TYPE_OF_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "server_error",
}


class APIError(Exception):
    """An HTTP error a route raises; its fields are OpenAI's."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPE_OF_STATUS.get(status, "server_error")
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)

    def body_text(self) -> str:
        """The error object as JSON text (an event or a line of a stream already under way)."""
        return bytes(self.response().body).decode()


def not_supported(param: str, what: str) -> APIError:
    """A 400 for an OpenAI/Ollama feature llamita does not have yet (never silently ignored)."""
    return APIError(400, f"'{param}': {what} is not supported yet", param=param, code="not_supported")


def api_error(e: Exception) -> APIError:
    """The HTTP form of any exception a route let through."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, InvalidParameterError):
        return APIError(400, str(e), param=e.name)
    if isinstance(e, ContextOverflowError):
        return APIError(400, str(e), code="context_length_exceeded")
    if isinstance(e, TemplateError):
        return APIError(400, f"the chat template failed: {e}", param="messages")
    if isinstance(e, QueueFullError):
        return APIError(503, str(e), code="queue_full", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(e, ServerShuttingDownError):
        return APIError(503, str(e), code="server_shutting_down")
    if isinstance(e, EngineFailure):
        return APIError(500, str(e), code="engine_error")
    if isinstance(e, RequestTimeoutError):
        # 504, not 408: RFC 9110's 408 says the client was too slow sending its request; here
        # the request arrived whole and the server ran out of its own time for it, which is
        # what a gateway's 504 says (and what proxies in front of llama.cpp or vLLM answer).
        return APIError(504, str(e), code="request_timeout")
    if isinstance(e, LlamitaError):
        return APIError(400, str(e))
    if isinstance(e, ClientDisconnect):  # nobody reads it; 499 as nginx logs it
        return APIError(499, "the client disconnected", code="client_disconnected")
    log.exception("unexpected error in a request", exc_info=e)
    return APIError(500, f"internal error: {type(e).__name__}", code="internal_error")


def validation_error(errors: Sequence[Any], body: Any, prefix: tuple[str, ...] = ("body",)) -> APIError:
    """A 400 for a body its pydantic model refused (pydantic's `errors()`, each `loc` starting
    with `prefix`), naming the field as OpenAI does (`input[0].role`). Of several errors (one
    per member of a union) the deepest is the one that found what is wrong."""
    if not errors:
        return APIError(400, "invalid request")
    error = max(errors, key=lambda err: len(err.get("loc", ())))
    if error.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {error.get('msg')}")
    param = _field_path(tuple(error.get("loc", ()))[len(prefix) :], body)
    message = f"'{param}': {error.get('msg')}" if param else str(error.get("msg"))
    return APIError(400, f"invalid request: {message}", param=param or None)


def _field_path(loc: tuple[Any, ...], body: Any) -> str:
    """pydantic's location of an error, as the path of the field in the body. pydantic puts the
    labels of union members in it (`str`, `list[...]`, a tag): a part that is not a key or an
    index of the body there is such a label, unless it is the last and names a key an object
    lacks (a missing field)."""
    path, value = "", body
    for i, part in enumerate(loc):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        elif not (i == len(loc) - 1 and isinstance(value, dict)):  # a label, not a missing key
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".")


def install_error_handlers(app: FastAPI) -> None:
    async def on_error(request: Request, e: Exception) -> JSONResponse:
        return api_error(e).response()

    async def on_http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = "not found: " + request.url.path if e.status_code == 404 else str(e.detail)
        return APIError(e.status_code, message, headers=getattr(e, "headers", None)).response()

    async def on_validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return validation_error(e.errors(), getattr(e, "body", None)).response()

    async def on_disconnect(request: Request, e: ClientDisconnect) -> JSONResponse:
        # A client that hangs up before its whole answer is normal (a closed tab, a timeout on
        # its side): one line, its request already aborted and its slot freed. Registered by
        # class so Starlette answers it here instead of in the catch-all for Exception, which
        # re-raises into uvicorn's "Exception in ASGI application" and a full traceback.
        log.info("%s %s: the client disconnected before the answer; request aborted", request.method, request.url.path)
        return api_error(e).response()

    # Starlette types a handler as taking any Exception; each of these takes the one class it is
    # registered for, which Starlette guarantees, hence the three ignores.
    app.add_exception_handler(ClientDisconnect, on_disconnect)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    # Our own errors through Starlette's ExceptionMiddleware (answered, not re-raised); anything
    # else through the catch-all, which also logs it.
    app.add_exception_handler(APIError, on_error)
    app.add_exception_handler(LlamitaError, on_error)
    app.add_exception_handler(Exception, on_error)
