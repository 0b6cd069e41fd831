"""create_app: the FastAPI application over one EngineLoop. Shared routes live here (health,
models, tokenize, metrics); the OpenAI and Ollama APIs in their own routers."""

from __future__ import annotations

import hmac
import os
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamita import __version__
from llamita.serving import embedding_routes, glass_routes, ollama_routes, openai_routes, ui_routes
from llamita.serving.engine_loop import EngineLoop
from llamita.serving.errors import APIError, install_error_handlers
from llamita.serving.guards import DEFAULT_MAX_BODY_BYTES, BodyLimit
from llamita.serving.metrics import CONTENT_TYPE, ServerMetrics
from llamita.serving.openapi import openapi_document
from llamita.serving.request_body import field, read_json_object
from llamita.serving.state import ServerState, server_state
from llamita.serving.store import ChatStore, default_data_dir

# Routes anyone may call even when an API key is set: load balancers probe /health; the chat
# page and its static files hold no data (the page asks for the key before calling /ui/...).
OPEN_PATHS = frozenset({"/health", "/", "/favicon.ico", "/openapi.json"})
OPEN_PREFIXES = ("/static/",)


def create_app(engine_loop: EngineLoop, model_name: str, api_key: str | None = None,
               data_dir: str | os.PathLike[str] | None = None, *,
               cors_origins: tuple[str, ...] = (), max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The server's app. The engine loop must be started by the caller (and stopped by it).

    api_key: when set, every route but /health, /openapi.json and the chat page's files needs
    `Authorization: Bearer <api_key>`.
    data_dir: where the web chat keeps llamita.db; None: default_data_dir().
    cors_origins: origins whose pages may call the API from a browser; none (the default)
    sends no CORS headers at all, so other sites' pages cannot read the answers.
    max_body_bytes: larger request bodies get 413 before they are read."""
    app = FastAPI(title="llamita", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = ServerMetrics()
    metrics.watch(engine_loop)
    app.state.llamita = ServerState(engine_loop, model_name, metrics)
    app.state.chat_store = ChatStore(default_data_dir() if data_dir is None else data_dir)
    install_error_handlers(app)

    app.include_router(openai_routes.router)
    app.include_router(ollama_routes.router)
    app.include_router(embedding_routes.router)
    app.include_router(ui_routes.router)
    app.include_router(glass_routes.router)
    app.mount("/static", StaticFiles(directory=ui_routes.STATIC_DIR), name="static")
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/tokenize", tokenize, methods=["POST"])
    app.add_api_route("/detokenize", detokenize, methods=["POST"])
    app.add_api_route("/metrics", metrics_page, methods=["GET"])
    app.add_api_route("/openapi.json", openapi_json, methods=["GET"])
    # Pure ASGI, not @app.middleware: that one wraps streams and hides client disconnects.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(AuthAndCount, api_key=api_key, metrics=metrics)
    if cors_origins:  # outermost: a browser's preflight is answered before the key check
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    return app


async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())


class AuthAndCount:
    """Refuses requests without the API key (when one is set) and counts every answer by route
    and status."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, metrics: ServerMetrics) -> None:
        self.app = app
        self.api_key = api_key
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app fails before it answers

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.api_key and not _is_open(scope["path"]) and not _has_key(Headers(scope=scope), self.api_key):
                error = APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                 code="invalid_api_key")
                await error.response()(scope, receive, send_and_note)
            else:
                await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _has_key(headers: Headers, api_key: str) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    # Constant-time comparison: the key must not leak through response timing.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


async def health(request: Request) -> JSONResponse:
    loop = server_state(request).loop
    if not loop.alive:
        return APIError(503, "the engine thread has stopped", code="engine_stopped").response()
    return JSONResponse({"status": "ok"})


async def list_models(request: Request) -> JSONResponse:
    state = server_state(request)
    return JSONResponse({"object": "list", "data": [_model_card(state, name) for name in state.model_names()]})


def _model_card(state: ServerState, name: str) -> dict[str, Any]:
    """One entry of /v1/models; a LoRA adapter is listed as base+adapter with its base as `parent`."""
    card = {"id": name, "object": "model", "created": int(state.started_at), "owned_by": "llamita",
            "max_model_len": state.context_length}
    if name != state.model_name:
        card["parent"] = state.model_name
    return card


async def tokenize(request: Request) -> JSONResponse:
    """{"content" (or "prompt"): text, "add_special": bool} -> {"tokens": [ids]}. add_special
    adds the BOS token when the model wants one (default true)."""
    state = server_state(request)
    body = await read_json_object(request)
    name = "content" if "content" in body else "prompt"
    text = field(body, name, str, required=True)
    add_special = field(body, "add_special", bool, True)
    tokenizer = state.tokenizer
    return JSONResponse({"tokens": tokenizer.encode(text, add_bos=add_special and tokenizer.add_bos)})


async def detokenize(request: Request) -> JSONResponse:
    state = server_state(request)
    body = await read_json_object(request)
    tokens = field(body, "tokens", list, required=True)
    n = state.tokenizer.vocab_size
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < n for t in tokens):
        raise APIError(400, f"'tokens' must be a list of token ids in [0, {n})", param="tokens")
    return JSONResponse({"content": state.tokenizer.decode(tokens)})


async def metrics_page(request: Request) -> Response:
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE)
