"""The OpenAPI 3.1 description of the server's main routes, served at /openapi.json.

Most handlers read their JSON bodies by hand (request_body.py) so that every error names its
field; this document says what they accept: the real limits, as the handlers enforce them (the
schema fuzzing in tests/serving/test_schema_fuzz.py narrows sizes for its own speed, in the test,
and checks that no input, valid or not, gets a 5xx).
/v1/responses declares its body as a pydantic model, whose own schema is published here.
Every /v1 path is also served without /v1 (not listed twice).
"""

from __future__ import annotations

from typing import Any

from llamita import __version__
from llamita.rag.answer import LANGUAGES
from llamita.rag.collection import MODES
from llamita.sampling_params import MAX_LOGPROBS
from llamita.serving.params import MAX_N
from llamita.serving.rag_chat import MAX_COLLECTIONS, MAX_TOP
from llamita.serving.responses_request import ResponsesRequest

_STR: dict[str, Any] = {"type": "string"}
_BOOL: dict[str, Any] = {"type": "boolean"}


def _num(lo: float, hi: float) -> dict[str, Any]:
    return {"type": "number", "minimum": lo, "maximum": hi}


def _int(lo: int, hi: int | None = None) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, **({"maximum": hi} if hi is not None else {})}


# Ollama's keep_alive: a duration ("5m", "1h30m") or seconds; 0 unloads, negative keeps.
_KEEP_ALIVE = {"oneOf": [_STR, {"type": "number"}]}
_STOP = {"oneOf": [_STR, {"type": "array", "items": _STR}]}
# Sampling fields shared by the OpenAI routes.
_SAMPLING = {
    "model": _STR, "max_tokens": _int(1), "max_completion_tokens": _int(1),
    "temperature": _num(0, 2), "top_p": _num(0, 1), "top_k": _int(0), "min_p": _num(0, 1),
    "seed": _int(0), "stop": _STOP, "presence_penalty": _num(-2, 2), "frequency_penalty": _num(-2, 2),
    "repetition_penalty": _num(0.01, 10), "n": _int(1, MAX_N), "stream": _BOOL,
    "stream_options": {"type": "object", "properties": {"include_usage": _BOOL}},
    "logit_bias": {"type": "object", "additionalProperties": _num(-100, 100)},
}
_TEXT_PARTS = {"type": "array", "items": {"type": "object", "required": ["type", "text"], "properties": {
    "type": {"enum": ["text"]}, "text": _STR}}}
_MESSAGE = {
    "type": "object", "required": ["role", "content"],
    "properties": {"role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
                   "content": {"oneOf": [_STR, _TEXT_PARTS, {"type": "null"}]}, "name": _STR},
}
_REF = "#/components/schemas/{model}"
# llamita's own chat fields: answer from document collections (serving/rag_chat.py).
_RAG = {
    "collections": {"type": "array", "items": _STR, "minItems": 1, "maxItems": MAX_COLLECTIONS},
    "rag": {"type": "object", "properties": {"top": _int(1, MAX_TOP), "mode": {"enum": list(MODES)},
                                             "language": {"enum": list(LANGUAGES)}}},
}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {**_STR, "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}}
_FILE = {"name": "file", "in": "path", "required": True, "schema": _STR}
_OLLAMA_OPTIONS = {"type": "object", "properties": {
    "num_predict": _int(-2), "temperature": _num(0, 2), "top_p": _num(0, 1), "top_k": _int(0),
    "seed": _int(0), "stop": {"type": "array", "items": _STR}, "repeat_penalty": _num(0.01, 10),
    "num_ctx": _int(1)}}


def _body(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": required, "properties": properties}}}}


def _post(summary: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"post": {"summary": summary, "requestBody": body, "responses": {
        "200": {"description": "the result (a stream of events when `stream` is true)"},
        "400": {"description": "an invalid request: the error names the field"}}}}


def _get(summary: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": "ok"}}}}


def _delete(summary: str, *parameters: dict[str, Any]) -> dict[str, Any]:
    return {"delete": {"summary": summary, "parameters": list(parameters), "responses": {
        "204": {"description": "deleted"}, "404": {"description": "no such collection or file"}}}}


def _on(operation: dict[str, Any], *parameters: dict[str, Any]) -> dict[str, Any]:
    """`operation` (one method's) on a path with `parameters`."""
    for method in operation.values():
        method["parameters"] = list(parameters)
    return operation


def _collection_paths() -> dict[str, Any]:
    upload = {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}
    return {
        "/v1/collections": {**_get("document collections with their counts"),
                            **_post("a new, empty collection", _body(["name"], {
                                "name": _NAME["schema"], "embedding_model": _STR}))},
        "/v1/collections/{name}": {**_on(_get("a collection: files, chunks, sizes"), _NAME),
                                   **_delete("delete a collection and its uploaded files", _NAME)},
        "/v1/collections/{name}/files": _on(_post("upload and index files (.txt .md .html .pdf .docx)", upload),
                                            _NAME),
        "/v1/collections/{name}/files/{file}": _delete("remove a file from a collection", _NAME, _FILE),
        "/v1/collections/{name}/search": _on(_post("search a collection", _body(["query"], {
            "query": {**_STR, "minLength": 1}, "top": _int(1, MAX_TOP), "mode": {"enum": list(MODES)}})), _NAME),
    }


def _model_body(schema: dict[str, Any]) -> dict[str, Any]:
    top = {k: v for k, v in schema.items() if k != "$defs"}
    return {"required": True, "content": {"application/json": {"schema": top}}}


def openapi_document() -> dict[str, Any]:
    responses_schema = ResponsesRequest.model_json_schema(ref_template=_REF)
    return {
        "openapi": "3.1.0",
        "components": {"schemas": responses_schema.get("$defs", {})},
        "info": {"title": "llamita", "version": __version__},
        "paths": {
            "/health": _get("liveness"),
            "/v1/models": _get("the served model, its adapters and the library's models"),
            "/api/tags": _get("Ollama: the served model, its adapters and the library's models"),
            "/api/ps": _get("Ollama: the loaded models, with expires_at, size and size_vram"),
            "/api/show": _post("Ollama: one model's details, template and metadata", _body([], {
                "model": _STR})),
            "/api/version": _get("Ollama: version"),
            "/v1/chat/completions": _post("OpenAI chat completion", _body(["messages"], {
                **_SAMPLING, "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
                "logprobs": _BOOL, "top_logprobs": _int(0, MAX_LOGPROBS),
                "response_format": {"type": "object", "properties": {"type": {"enum": ["text", "json_object"]}}},
                **_RAG,
            })),
            "/v1/completions": _post("OpenAI text completion", _body(["prompt"], {
                **_SAMPLING, "prompt": {"oneOf": [_STR, {"type": "array", "items": _STR}]},
                "echo": _BOOL, "logprobs": _int(0, MAX_LOGPROBS),
            })),
            "/v1/responses": _post("OpenAI Responses API", _model_body(responses_schema)),
            "/v1/embeddings": _post("OpenAI embeddings", _body(["input"], {
                "model": _STR, "input": {"oneOf": [_STR, {"type": "array", "items": _STR}]},
                "encoding_format": {"enum": ["float", "base64"]},
            })),
            "/api/chat": _post("Ollama chat", _body(["messages"], {
                "model": _STR, "messages": {"type": "array", "items": _MESSAGE},
                "stream": _BOOL, "options": _OLLAMA_OPTIONS, "keep_alive": _KEEP_ALIVE, **_RAG,
            })),
            "/api/generate": _post("Ollama generate", _body([], {
                "model": _STR, "prompt": _STR, "system": _STR, "stream": _BOOL, "raw": _BOOL,
                "options": _OLLAMA_OPTIONS, "keep_alive": _KEEP_ALIVE,
            })),
            "/api/embed": _post("Ollama embeddings", _body(["input"], {
                "model": _STR, "input": {"oneOf": [_STR, {"type": "array", "items": _STR}]},
                "truncate": _BOOL,
            })),
            "/tokenize": _post("text to token ids", _body(["content"], {"content": _STR, "add_special": _BOOL})),
            "/detokenize": _post("token ids to text", _body(["tokens"], {
                "tokens": {"type": "array", "items": _int(0)}})),
            "/ui/conversations": _post("web chat: a new conversation", _body([], {
                "title": _STR, "system_prompt": _STR,
                "params": {"type": "object", "properties": {"temperature": _num(0, 2), "top_p": _num(0, 1),
                                                            "top_k": _int(0), "max_tokens": _int(1)}},
            })),
            **_collection_paths(),
        },
    }
