"""What every route needs: the engine loop, the served model's name, metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from llamita.engine.loader import LoadedModel
from llamita.serving.engine_loop import EngineLoop
from llamita.serving.errors import APIError
from llamita.serving.metrics import ServerMetrics
from llamita.serving.request_body import read_json_object
from llamita.serving.response_history import ResponseHistory
from llamita.tokenizer.tokenizer import Tokenizer


@dataclass
class ServerState:
    loop: EngineLoop
    model_name: str
    metrics: ServerMetrics
    started_at: float = field(default_factory=time.time)  # Unix seconds
    # True: a `model` other than the served one (or base+adapter) is a 404. False (the
    # default): any name answers, as llama.cpp's server and most local servers do.
    strict_model_names: bool = False
    responses: ResponseHistory = field(default_factory=ResponseHistory)  # for previous_response_id

    @property
    def loaded(self) -> LoadedModel:
        return self.loop.engine.loaded

    @property
    def tokenizer(self) -> Tokenizer:
        return self.loop.engine.tokenizer

    @property
    def context_length(self) -> int:
        """Positions one request may use: the model's window, or less when the KV cache is smaller."""
        return self.loop.engine.context_length

    @property
    def adapters(self) -> list[str]:
        """Names of the LoRA adapters a request may pick (`llamita serve --lora`)."""
        return list(self.loop.engine.model.lora.names)

    def model_names(self) -> list[str]:
        """Every `model` a request may name: the base, and base+adapter for each adapter."""
        return [self.model_name] + [f"{self.model_name}+{a}" for a in self.adapters]

    def adapter_of(self, body: dict[str, Any]) -> str | None:
        """The LoRA adapter a request asks for, by `"model": "base+NAME"` or `"lora": "NAME"`
        (None: the base model). 404 for an adapter the server does not hold."""
        model, lora = body.get("model"), body.get("lora")
        named = model.removesuffix(":latest").partition("+")[2] if isinstance(model, str) else ""
        if lora is not None and not isinstance(lora, str):
            raise APIError(400, "'lora' must be the name of an adapter", param="lora")
        if lora and named and lora != named:
            raise APIError(400, f"'model' asks for adapter '{named}' and 'lora' for '{lora}'", param="lora")
        name = lora or named or None
        if name is not None and name not in self.adapters:
            raise APIError(404, f"no LoRA adapter '{name}'; this server has "
                           f"{', '.join(self.adapters) or 'none'}", param="lora" if lora else "model",
                           code="model_not_found")
        return name

    def check_model(self, name: object) -> None:
        """Whether a request may name `name` as its model; no name means the served model.

        Strict: 404 unless it is the served model or base+adapter (Ollama's ':latest' tag
        allowed). Otherwise any name answers with the served model, except one that asks for
        a LoRA adapter (`NAME+ADAPTER`) the server does not hold: running the base instead
        would silently answer without the adapter the client chose."""
        if name is None or name == "":
            return
        if not isinstance(name, str):
            raise APIError(400, "'model' must be a string", param="model")
        if name.removesuffix(":latest") in self.model_names():
            return
        if self.strict_model_names:
            raise self.unknown_model(name)
        if "+" in name:
            self.adapter_of({"model": name})  # 404 naming the adapters it has

    def unknown_model(self, name: str) -> APIError:
        """The 404 for a model name this server does not have, listing those it has."""
        return APIError(404, f"the model '{name}' does not exist; this server serves "
                        f"{', '.join(repr(n) for n in self.model_names())}", param="model", code="model_not_found")


def server_state(request: Request) -> ServerState:
    return request.app.state.llamita


async def model_request(request: Request) -> tuple[ServerState, dict[str, Any]]:
    """The server state and the JSON body of a request that names a model (404 for another)."""
    state = server_state(request)
    body = await read_json_object(request)
    state.check_model(body.get("model"))
    return state, body
