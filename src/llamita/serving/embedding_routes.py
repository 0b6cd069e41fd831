"""Embeddings: POST /v1/embeddings (OpenAI), POST /api/embed and the older /api/embeddings
(Ollama). Each input is the mean of the model's final hidden states over its tokens, scaled to
unit length (engine/embeddings.py), computed on the engine thread between batch steps."""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llamita.engine.embeddings import embed
from llamita.engine.llm_engine import LLMEngine
from llamita.engine.prompts import encode_prompt
from llamita.serving.errors import not_supported
from llamita.serving.openai_routes import prompt_id_lists
from llamita.serving.openapi import request_body
from llamita.serving.protocol import EmbeddingRequest, OllamaEmbeddingsRequest, OllamaEmbedRequest
from llamita.serving.request_body import field
from llamita.serving.state import ServerState, model_request

router = APIRouter()


async def _embed_all(state: ServerState, inputs: list[list[int]]) -> list[list[float]]:
    def job(engine: LLMEngine) -> list[list[float]]:
        return [embed(engine.model, ids, engine.vocab_size).tolist() for ids in inputs]

    return await state.loop.call(job)


def _truncate(state: ServerState, inputs: list[list[int]], truncate: bool) -> list[list[int]]:
    """Ollama's `truncate` (default true): cut inputs longer than the context window to it
    (keeping their start); with false, a long input is a 400 like everywhere else."""
    window = state.context_length
    return [ids[:window] for ids in inputs] if truncate else inputs


@router.post("/v1/embeddings", openapi_extra=request_body(EmbeddingRequest))
async def openai_embeddings(request: Request) -> JSONResponse:
    state, body = await model_request(request, EmbeddingRequest)
    if body.get("dimensions") is not None:
        raise not_supported("dimensions", "reduced embedding dimensions")
    encoding = body.get("encoding_format") or "float"  # float or base64 (EmbeddingRequest)
    inputs = prompt_id_lists(state, body["input"], "input")
    vectors = await _embed_all(state, inputs)
    data = []
    for i, v in enumerate(vectors):
        # base64 is OpenAI's packed form: little-endian float32 bytes.
        value: Any = v if encoding == "float" else base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    n = sum(len(ids) for ids in inputs)
    return JSONResponse(
        {"object": "list", "data": data, "model": state.model_name, "usage": {"prompt_tokens": n, "total_tokens": n}}
    )


@router.post("/api/embed", openapi_extra=request_body(OllamaEmbedRequest))
async def ollama_embed(request: Request) -> JSONResponse:
    start = time.perf_counter_ns()
    state, body = await model_request(request, OllamaEmbedRequest)
    truncate = field(body, "truncate", bool, True)
    inputs = _truncate(state, prompt_id_lists(state, body["input"], "input"), truncate)
    vectors = await _embed_all(state, inputs)
    return JSONResponse(
        {
            "model": state.model_name,
            "embeddings": vectors,
            "total_duration": time.perf_counter_ns() - start,
            "load_duration": 0,
            "prompt_eval_count": sum(len(ids) for ids in inputs),
        }
    )


@router.post("/api/embeddings", openapi_extra=request_body(OllamaEmbeddingsRequest))
async def ollama_embeddings_legacy(request: Request) -> JSONResponse:
    """Ollama's first embeddings route: one `prompt`, one `embedding`."""
    state, body = await model_request(request, OllamaEmbeddingsRequest)
    prompt = field(body, "prompt", str, required=True)
    (vector,) = await _embed_all(state, _truncate(state, [encode_prompt(state.tokenizer, prompt)], True))
    return JSONResponse({"embedding": vector})
