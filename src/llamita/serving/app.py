"""create_app: the FastAPI application over one EngineLoop. Shared routes live here (health,
models, tokenize, metrics); the OpenAI and Ollama APIs in their own routers."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamita import __version__
from llamita.serving import (
    collection_routes,
    create_routes,
    embedding_routes,
    glass_routes,
    library_routes,
    ollama_routes,
    openai_routes,
    responses_routes,
    ui_routes,
)
from llamita.serving.engine_loop import EngineLoop
from llamita.serving.errors import APIError, install_error_handlers
from llamita.serving.guards import DEFAULT_MAX_BODY_BYTES, BodyLimit
from llamita.serving.metrics import CONTENT_TYPE, ServerMetrics
from llamita.serving.model_pool import ModelPool, PoolConfig
from llamita.serving.openapi import openapi_document
from llamita.serving.request_body import field, read_json_object
from llamita.serving.state import LEASES, ServerState, server_state
from llamita.serving.store import ChatStore, default_data_dir

# Routes anyone may call even when an API key is set: load balancers probe /health; the chat
# page and its static files hold no data (the page asks for the key before calling /ui/...).
OPEN_PATHS = frozenset({"/health", "/", "/favicon.ico", "/openapi.json"})
OPEN_PREFIXES = ("/static/",)


def create_app(
    engine_loop: EngineLoop,
    model_name: str,
    api_key: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cors_origins: tuple[str, ...] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    strict_model_names: bool = False,
    pool_config: PoolConfig = PoolConfig(),
    load_engine: Callable[[str], EngineLoop] | None = None,
    estimate: Callable[[Path], int] | None = None,
) -> FastAPI:
    """The server's app. The engine loop must be started by the caller (and stopped by it).

    api_key: when set, every route but /health, /openapi.json and the chat page's files needs
    `Authorization: Bearer <api_key>` or `X-Api-Key: <api_key>`.
    data_dir: where the web chat keeps llamita.db; None: default_data_dir().
    cors_origins: origins whose pages may call the API from a browser; none (the default)
    sends no CORS headers at all, so other sites' pages cannot read the answers.
    max_body_bytes: larger request bodies get 413 before they are read.
    strict_model_names: a request naming another model than the served one gets 404; by
    default any name answers (model_pool.py, ModelPool.resolve).
    pool_config: with `library` set, every local model may be asked for by name and is loaded
    on demand by `load_engine(name)` (an EngineLoop, not yet started; loaded by its library
    name, so a created model comes with its settings and template), sized before loading by
    `estimate(path)` (bytes) against `max_memory`. Without it only `engine_loop`'s model serves."""
    app = FastAPI(title="llamita", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = ServerMetrics()
    metrics.watch(engine_loop)
    default = ServerState(engine_loop, model_name, metrics, strict_model_names=strict_model_names)
    app.state.llamita = default

    def load(name: str, path: Path) -> ServerState:  # path: what the pool sized; loaded by name
        assert load_engine is not None
        loop = load_engine(name)
        loop.observer = metrics
        loop.start()
        return ServerState(loop, name, metrics, default.started_at, strict_model_names, default.responses)

    default_path = engine_loop.engine.loaded.path
    app.state.pool = ModelPool(
        default,
        default_path,
        estimate(default_path) if estimate else 0,
        config=pool_config,
        loader=load if load_engine else None,
        estimate=estimate,
    )
    metrics.watch_pool(app.state.pool)
    app.state.chat_store = ChatStore(default_data_dir() if data_dir is None else data_dir)
    install_error_handlers(app)

    openai_api = [openai_routes.router, responses_routes.router, embedding_routes.router, library_routes.router]
    for router in openai_api:
        app.include_router(router)
    app.include_router(ollama_routes.router)
    app.include_router(create_routes.router)
    app.include_router(ui_routes.router)
    app.include_router(glass_routes.router)
    app.include_router(collection_routes.router)
    app.mount("/static", StaticFiles(directory=ui_routes.STATIC_DIR), name="static")
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/tokenize", tokenize, methods=["POST"])
    app.add_api_route("/detokenize", detokenize, methods=["POST"])
    app.add_api_route("/metrics", metrics_page, methods=["GET"])
    app.add_api_route("/openapi.json", openapi_json, methods=["GET"])
    _serve_without_v1(app, openai_api)
    # Pure ASGI, not @app.middleware: that one wraps streams and hides client disconnects.
    app.add_middleware(ModelLeases, pool=app.state.pool)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(AuthAndCount, api_key=api_key, metrics=metrics)
    if cors_origins:  # outermost: a browser's preflight is answered before the key check
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"], allow_headers=["*"])
    return app


def _serve_without_v1(app: FastAPI, routers: list[APIRouter]) -> None:
    """Every /v1/... route of the app and `routers` also at its path without /v1
    (/chat/completions, /models...), the same handler: for clients whose base URL lacks /v1
    (llama.cpp's server answers both)."""
    for route in [*app.routes, *(r for router in routers for r in router.routes)]:
        if isinstance(route, APIRoute) and route.path.startswith("/v1/"):
            app.add_api_route(
                route.path.removeprefix("/v1"),
                route.endpoint,
                methods=sorted(route.methods or ()),
                include_in_schema=False,
            )


async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document(request.app.routes))


class ModelLeases:
    """Releases the pool leases a request took (state.model_state) once its whole answer has
    been sent, stream included, or the client has gone: only then may its model be unloaded."""

    def __init__(self, app: ASGIApp, *, pool: ModelPool) -> None:
        self.app = app
        self.pool = pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        leases: list[Any] = []
        scope[LEASES] = leases
        try:
            await self.app(scope, receive, send)
        finally:
            for model in leases:
                self.pool.release(model)


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
            headers = Headers(scope=scope)
            if self.api_key and _is_preflight(scope, headers):
                # Browsers send no key on a CORS preflight. With --cors-origin the CORS
                # middleware (outside this one) answers it; without, this answer grants no
                # origin, so the browser still refuses the real request.
                await Response(status_code=204, headers={"Allow": "GET, POST, PUT, DELETE, OPTIONS"})(
                    scope, receive, send_and_note
                )
            elif self.api_key and not _is_open(scope["path"]) and not _has_key(headers, self.api_key):
                error = APIError(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'",
                    code="invalid_api_key",
                )
                await error.response()(scope, receive, send_and_note)
            else:
                await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _is_preflight(scope: Scope, headers: Headers) -> bool:
    return scope["method"] == "OPTIONS" and "access-control-request-method" in headers


def _has_key(headers: Headers, api_key: str) -> bool:
    """`Authorization: Bearer <key>` (OpenAI's clients) or `X-Api-Key: <key>` (llama.cpp's
    server and Anthropic-style clients)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ""
    # Constant-time comparisons, both always made: the key must not leak through response timing.
    by_bearer = hmac.compare_digest(bearer.encode(), api_key.encode())
    by_header = hmac.compare_digest(headers.get("x-api-key", "").strip().encode(), api_key.encode())
    return by_bearer or by_header


async def health(request: Request) -> JSONResponse:
    loop = server_state(request).loop
    if not loop.alive:
        return APIError(503, "the engine thread has stopped", code="engine_stopped").response()
    return JSONResponse({"status": "ok"})


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
