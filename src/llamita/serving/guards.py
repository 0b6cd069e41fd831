"""ASGI guards in front of every route: a request body too large is refused with 413 before it
is read into memory."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamita.serving.errors import APIError

# Far above any real request (a 128K-token prompt is ~0.5 MB of text), far below a memory problem.
DEFAULT_MAX_BODY_BYTES = 8 << 20


class BodyLimit:
    """413 for a body over `max_bytes`: by its Content-Length at once, or, for a chunked body,
    as soon as the bytes received pass the limit (nothing past it is buffered)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        received = 0
        too_big = False

        async def counted() -> Message:
            nonlocal received, too_big
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_big = True
                    raise _BodyTooLarge
            return message

        started = False

        async def note_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, note_start)
        except _BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send)
        except Exception:
            if not (too_big and not started):
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = APIError(413, f"the request body is larger than {self.max_bytes:,} bytes", code="request_too_large")
        await error.response()(scope, receive, send)


class _BodyTooLarge(Exception):
    pass
