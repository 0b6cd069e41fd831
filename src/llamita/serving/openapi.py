"""The OpenAPI 3.1 description of the server's main routes, served at /openapi.json.

The request bodies of the OpenAI and Ollama routes are their pydantic models' schemas
(serving/protocol.py; /v1/responses: serving/responses_request.py), the models the routes
validate against, so the document states the limits the server enforces. The schema fuzzing in
tests/serving/test_schema_fuzz.py narrows sizes for its own speed, in the test, and checks that
no input, valid or not, gets a 5xx.

Routes that still read their bodies by hand (request_body.py) are described here by hand:
/tokenize, /detokenize, /api/show, /ui/conversations and the collection routes.
Every /v1 path is also served without /v1 (not listed twice).
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from llamita import __version__
from llamita.rag.collection import MODES
from llamita.serving.protocol import MAX_TOP, REQUEST_MODELS
from llamita.serving.responses_request import ResponsesRequest

_STR: dict[str, Any] = {"type": "string"}
_BOOL: dict[str, Any] = {"type": "boolean"}


def _num(lo: float, hi: float) -> dict[str, Any]:
    return {"type": "number", "minimum": lo, "maximum": hi}


def _int(lo: int, hi: int | None = None) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, **({"maximum": hi} if hi is not None else {})}


_NAME = {"name": "name", "in": "path", "required": True, "schema": {**_STR, "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}}
_FILE = {"name": "file", "in": "path", "required": True, "schema": _STR}
_REF = "#/components/schemas/{model}"


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


class _Schema(GenerateJsonSchema):
    """JSON Schema as the API states it: a field that may be null (absent) is stated by its
    type alone (no null default), without pydantic's titles."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default", ...) is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _model_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """(path -> its request body, the shared component schemas) of every route whose body is
    a pydantic model (serving/protocol.py, serving/responses_request.py)."""
    models = {**REQUEST_MODELS, "/v1/responses": ResponsesRequest}
    tops, defs = models_json_schema([(m, "validation") for m in models.values()], ref_template=_REF,
                                    schema_generator=_Schema)
    components = defs.get("$defs", {})
    bodies = {}
    for path, model in models.items():  # each body stated in place, its parts by reference
        name = tops[(model, "validation")]["$ref"].rsplit("/", 1)[-1]
        bodies[path] = {"required": True, "content": {"application/json": {"schema": components[name]}}}
    return bodies, components


def openapi_document() -> dict[str, Any]:
    bodies, components = _model_schemas()
    return {
        "openapi": "3.1.0",
        "components": {"schemas": components},
        "info": {"title": "llamita", "version": __version__},
        "paths": {
            "/health": _get("liveness"),
            "/v1/models": _get("the served model, its adapters and the library's models"),
            "/api/tags": _get("Ollama: the served model, its adapters and the library's models"),
            "/api/ps": _get("Ollama: the loaded models, with expires_at, size and size_vram"),
            "/api/show": _post("Ollama: one model's details, template and metadata", _body([], {
                "model": _STR})),
            "/api/version": _get("Ollama: version"),
            "/v1/chat/completions": _post("OpenAI chat completion", bodies["/v1/chat/completions"]),
            "/v1/completions": _post("OpenAI text completion", bodies["/v1/completions"]),
            "/v1/responses": _post("OpenAI Responses API", bodies["/v1/responses"]),
            "/v1/embeddings": _post("OpenAI embeddings", bodies["/v1/embeddings"]),
            "/api/chat": _post("Ollama chat", bodies["/api/chat"]),
            "/api/generate": _post("Ollama generate", bodies["/api/generate"]),
            "/api/embed": _post("Ollama embeddings", bodies["/api/embed"]),
            "/api/embeddings": _post("Ollama embeddings, one prompt (Ollama's first route)",
                                     bodies["/api/embeddings"]),
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
