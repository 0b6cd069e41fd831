"""The OpenAPI 3.1 description of the server's main routes, served at /openapi.json: generated
by FastAPI from the routes themselves (paths, methods, path parameters, the handlers' names and
docstrings), with the request bodies the routes declare.

The OpenAI and Ollama routes declare their bodies as pydantic models (serving/protocol.py;
/v1/responses: serving/responses_request.py) with `request_body`, the models they validate
against, so the document states the limits the server enforces. Routes that still read their
bodies by hand (request_body.py) are described here, by hand, in HAND_READ_BODIES: /tokenize,
/detokenize, /api/show, POST /ui/conversations, POST /v1/collections and its search and upload.
The schema fuzzing in tests/serving/test_schema_fuzz.py narrows sizes for its own speed, in the
test, and checks that no input, valid or not, gets a 5xx.

Only PUBLISHED operations are listed: not the web page's own routes, the glass views, nor model
management that downloads, copies or deletes models. Every /v1 path is also served without /v1
(not listed twice).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema
from starlette.routing import BaseRoute

from llamita import __version__
from llamita.rag.collection import MODES
from llamita.serving.protocol import MAX_TOP

_REF = "#/components/schemas/{model}"
_STR: dict[str, Any] = {"type": "string"}
_BOOL: dict[str, Any] = {"type": "boolean"}

# (method, path) of every operation /openapi.json lists.
PUBLISHED = frozenset(
    {
        ("GET", "/health"),
        ("GET", "/v1/models"),
        ("GET", "/api/tags"),
        ("GET", "/api/ps"),
        ("POST", "/api/show"),
        ("GET", "/api/version"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/responses"),
        ("POST", "/v1/embeddings"),
        ("POST", "/api/chat"),
        ("POST", "/api/generate"),
        ("POST", "/api/embed"),
        ("POST", "/api/embeddings"),
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("POST", "/ui/conversations"),
        ("GET", "/v1/collections"),
        ("POST", "/v1/collections"),
        ("GET", "/v1/collections/{name}"),
        ("DELETE", "/v1/collections/{name}"),
        ("POST", "/v1/collections/{name}/files"),
        ("DELETE", "/v1/collections/{name}/files/{file}"),
        ("POST", "/v1/collections/{name}/search"),
    }
)


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


def _json(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {media: {"schema": schema}}}}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """A route's `openapi_extra` declaring `model` as its JSON body (the handler validates it
    itself: serving/protocol.py, parse_body). The model's parts go under `$defs`, which
    openapi_document moves into the document's components."""
    return _json(model.model_json_schema(ref_template=_REF, schema_generator=_Schema))


def answer(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """A route's `responses` declaring `model` as its whole answer (the stream's events are not
    described)."""
    return {
        200: {
            "model": model,
            "description": "the whole answer; with `stream: true`, server-sent events of chunks instead",
        }
    }


def _object(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _int(lo: int, hi: int | None = None) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, **({"maximum": hi} if hi is not None else {})}


def _num(lo: float, hi: float) -> dict[str, Any]:
    return {"type": "number", "minimum": lo, "maximum": hi}


_NAME = {**_STR, "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
# The bodies of the routes that read them by hand (request_body.py), as those handlers check them.
HAND_READ_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/show"): _json(_object([], {"model": _STR})),
    ("POST", "/tokenize"): _json(_object(["content"], {"content": _STR, "add_special": _BOOL})),
    ("POST", "/detokenize"): _json(_object(["tokens"], {"tokens": {"type": "array", "items": _int(0)}})),
    ("POST", "/ui/conversations"): _json(
        _object(
            [],
            {
                "title": _STR,
                "system_prompt": _STR,
                "params": {
                    "type": "object",
                    "properties": {
                        "temperature": _num(0, 2),
                        "top_p": _num(0, 1),
                        "top_k": _int(0),
                        "max_tokens": _int(1),
                    },
                },
            },
        )
    ),
    ("POST", "/v1/collections"): _json(_object(["name"], {"name": _NAME, "embedding_model": _STR})),
    ("POST", "/v1/collections/{name}/files"): _json(
        _object(["files"], {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}),
        "multipart/form-data",
    ),
    ("POST", "/v1/collections/{name}/search"): _json(
        _object(["query"], {"query": {**_STR, "minLength": 1}, "top": _int(1, MAX_TOP), "mode": {"enum": list(MODES)}})
    ),
}


def openapi_document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The document of the PUBLISHED operations among `routes` (the app's)."""
    doc = copy.deepcopy(get_openapi(title="llamita", version=__version__, openapi_version="3.1.0", routes=routes))
    doc["paths"] = {
        path: kept
        for path, item in doc["paths"].items()
        if (kept := {m: op for m, op in item.items() if (m.upper(), path) in PUBLISHED})
    }
    components: dict[str, Any] = doc.get("components", {}).get("schemas", {})  # the answers'
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body (see below)
        components.pop(name, None)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            operation.update(HAND_READ_BODIES.get((method.upper(), path), {}))
            for content in operation.get("requestBody", {}).get("content", {}).values():
                for name, schema in content["schema"].pop("$defs", {}).items():
                    if components.setdefault(name, schema) != schema:
                        raise RuntimeError(f"two request models define a different {name!r}: rename one")
            # FastAPI's 422 for a path parameter: the server answers every invalid request 400.
            operation["responses"].pop("422", None)
            if "requestBody" in operation:
                operation["responses"]["400"] = {"description": "an invalid request: the error names the field"}
    doc["components"] = {"schemas": components}
    return doc
