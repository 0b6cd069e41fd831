"""What every route needs: the engine loop, the served model's name, metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from llamita.engine.loader import LoadedModel
from llamita.engine.lora_attach import combined_name
from llamita.serving.engine_loop import EngineLoop
from llamita.serving.errors import APIError
from llamita.serving.keep_alive import parse_keep_alive
from llamita.serving.metrics import ServerMetrics
from llamita.serving.protocol import parse_body
from llamita.serving.request_body import read_json_object
from llamita.serving.response_history import ResponseHistory
from llamita.tokenizer.tokenizer import Tokenizer


@dataclass
class ServerState:
    loop: EngineLoop
    model_name: str
    metrics: ServerMetrics
    started_at: float = field(default_factory=time.time)  # Unix seconds
    # True: a `model` that is neither the served one (or base+adapter) nor a library model is
    # a 404. False (the default): any name answers, as llama.cpp's server and most local
    # servers do (model_pool.py, ModelPool.resolve).
    strict_model_names: bool = False
    responses: ResponseHistory = field(default_factory=ResponseHistory)  # for previous_response_id

    @property
    def loaded(self) -> LoadedModel:
        return self.loop.engine.loaded

    @property
    def tokenizer(self) -> Tokenizer:
        return self.loop.engine.tokenizer

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """A created model's PARAMETERs (`llamita create`) as SamplingParams keyword arguments:
        what a request's own fields override. Empty for any other model."""
        settings = self.loaded.settings
        return settings.sampling_kwargs() if settings is not None else {}

    def conversation(self, messages: list[Any]) -> list[Any]:
        """`messages` as a created model sees them: its SYSTEM (when the request has no system
        message) and MESSAGEs first, Ollama's order; unchanged for any other model."""
        settings = self.loaded.settings
        return settings.conversation(messages) if settings is not None else messages

    @property
    def context_length(self) -> int:
        """Positions one request may use: the model's window, or less when the KV cache is smaller."""
        return self.loop.engine.context_length

    @property
    def adapters(self) -> list[str]:
        """Names of the LoRA adapters a request may pick (`llamita serve --lora`)."""
        return list(self.loop.engine.model.lora.names)

    @property
    def model_adapter(self) -> str | None:
        """The slot of a created model's ADAPTERs (server.attach_created_adapters): what a
        request that names no adapter runs with. None for other models."""
        settings = self.loaded.settings
        if settings is None or not settings.adapters:
            return None
        name = combined_name(settings.adapters)
        return name if name in self.adapters else None

    def model_names(self) -> list[str]:
        """Every `model` a request may name: the base, and base+adapter for each adapter."""
        return [self.model_name] + [f"{self.model_name}+{a}" for a in self.adapters]

    def adapter_of(self, body: dict[str, Any]) -> str | None:
        """The LoRA adapter a request asks for, by `"model": "base+NAME"` or `"lora": "NAME"`;
        naming none: a created model's ADAPTERs (`model_adapter`), else None (the base model).
        404 for an adapter the server does not hold."""
        model, lora = body.get("model"), body.get("lora")
        named = model.removesuffix(":latest").partition("+")[2] if isinstance(model, str) else ""
        if lora is not None and not isinstance(lora, str):
            raise APIError(400, "'lora' must be the name of an adapter", param="lora")
        if lora and named and lora != named:
            raise APIError(400, f"'model' asks for adapter '{named}' and 'lora' for '{lora}'", param="lora")
        name = lora or named or None
        if name is not None and name not in self.adapters:
            raise APIError(
                404,
                f"no LoRA adapter '{name}'; this server has {', '.join(self.adapters) or 'none'}",
                param="lora" if lora else "model",
                code="model_not_found",
            )
        return name if name is not None else self.model_adapter


def server_state(request: Request) -> ServerState:
    """The default model's state (the one requests that name no model get)."""
    state: ServerState = request.app.state.llamita
    return state


# The scope key under which ModelLeases (app.py) keeps the pool leases a request took.
LEASES = "llamita.leases"
# The scope key of the seconds a request waited for its model to load (Ollama's load_duration).
LOAD_SECONDS = "llamita.load_seconds"


def load_seconds(request: Request) -> float:
    """Seconds this request waited for its model to be loaded (0 when it was loaded)."""
    seconds: float = request.scope.get(LOAD_SECONDS, 0.0)
    return seconds


async def model_request(request: Request, schema: type[BaseModel] | None = None) -> tuple[ServerState, dict[str, Any]]:
    """The state of the model a request's JSON body names (loaded on demand; 404 for a name
    the server cannot serve) and the body, validated against `schema` (serving/protocol.py)
    before any model is loaded. The model stays loaded until the answer has ended."""
    body = await read_json_object(request)
    if schema is not None:
        parse_body(schema, body)
    return await model_state(request, body.get("model"), body), body


async def model_state(request: Request, name: object, body: dict[str, Any] | None = None) -> ServerState:
    """The state of model `name` (None: the default) with a lease on it for this request;
    `body`'s `keep_alive` (Ollama's field) says how long it stays after the request."""
    pool = request.app.state.pool
    keep_alive = keep_alive_of(pool, body or {})
    key = pool.resolve_loaded(name)
    model = pool.try_acquire(key, keep_alive) if key is not None else None
    if model is None:

        def resolve_and_acquire() -> Any:
            return pool.acquire(key if key is not None else pool.resolve(name), keep_alive)

        pending = asyncio.ensure_future(asyncio.to_thread(resolve_and_acquire))
        started = time.perf_counter()
        try:
            model = await asyncio.shield(pending)
            request.scope[LOAD_SECONDS] = time.perf_counter() - started
        except asyncio.CancelledError:  # the client left while the model loaded: no lease kept
            pending.add_done_callback(lambda f: f.cancelled() or f.exception() or pool.release(f.result()))
            raise
    assert model is not None  # acquired, or loaded and acquired
    leases = request.scope.get(LEASES)
    if leases is None:  # not under ModelLeases: nobody would release it
        pool.release(model)
    else:
        leases.append(model)
    state: ServerState = model.state
    return state


def keep_alive_of(pool: Any, body: dict[str, Any]) -> float | None:
    """Seconds the model stays loaded after this request: the body's `keep_alive` (Ollama's
    durations: "5m", 300, 0, -1 -> None, for ever), else the server's default."""
    if body.get("keep_alive") is None:
        default: float | None = pool.config.keep_alive
        return default
    return parse_keep_alive(body["keep_alive"])
