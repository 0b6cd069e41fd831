"""The request models (serving/protocol.py): the errors name the field's path in OpenAI's
shape, unknown fields pass, types are as lenient as the hand-written checks were, and
/openapi.json states the limits the models enforce. No server, no model: milliseconds."""

from __future__ import annotations

import pytest

from llamita.sampling_params import MAX_LOGPROBS
from llamita.serving.errors import APIError
from llamita.serving.openapi import openapi_document
from llamita.serving.protocol import (
    MAX_COLLECTIONS,
    MAX_N,
    MAX_TOP,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    parse_body,
)
from llamita.serving.responses_request import ResponsesRequest

USER = {"role": "user", "content": "hola"}


def _refused(model, body: dict) -> APIError:
    with pytest.raises(APIError) as e:
        parse_body(model, body)
    error = e.value
    assert error.status == 400 and error.type == "invalid_request_error"
    assert error.param and f"'{error.param}'" in error.message
    return error


@pytest.mark.parametrize(
    "model, body, param",
    [
        (ChatCompletionRequest, {"messages": [USER, {"role": "user", "content": 7}]}, "messages[1].content"),
        (ChatCompletionRequest, {"messages": [USER, {"role": "robot", "content": "x"}]}, "messages[1].role"),
        (ChatCompletionRequest, {"messages": [USER, {"content": "x"}]}, "messages[1].role"),
        (
            ChatCompletionRequest,
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
            "messages[0].content[0].text",
        ),
        (ChatCompletionRequest, {"messages": [USER], "rag": {"top": MAX_TOP + 1}, "collections": ["a"]}, "rag.top"),
        (ChatCompletionRequest, {"messages": [USER], "collections": ["a"] * (MAX_COLLECTIONS + 1)}, "collections"),
        (
            ChatCompletionRequest,
            {"messages": [USER], "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
        ),
        (ChatCompletionRequest, {"messages": [USER], "tool_choice": {"type": "function"}}, "tool_choice.function"),
        (ChatCompletionRequest, {"messages": [USER], "n": MAX_N + 1}, "n"),
        (
            ChatCompletionRequest,
            {"messages": [USER], "logprobs": True, "top_logprobs": MAX_LOGPROBS + 1},
            "top_logprobs",
        ),
        (ChatCompletionRequest, {"messages": [USER], "temperature": True}, "temperature"),
        (ChatCompletionRequest, {"messages": [USER], "max_tokens": "5"}, "max_tokens"),
        (ChatCompletionRequest, {"messages": []}, "messages"),
        (CompletionRequest, {"prompt": [[1, 2], [3, -1]]}, "prompt[1][1]"),
        (CompletionRequest, {"prompt": "x", "logprobs": MAX_LOGPROBS + 1}, "logprobs"),
        (OllamaChatRequest, {"messages": [USER], "options": {"num_ctx": 0}}, "options.num_ctx"),
        (OllamaGenerateRequest, {"prompt": "x", "options": {"temperature": "x"}}, "options.temperature"),
        (OllamaGenerateRequest, {"prompt": "x", "keep_alive": True}, "keep_alive"),
    ],
)
def test_a_wrong_field_is_named_by_its_path(model, body, param):
    assert _refused(model, body).param == param


def test_a_missing_field_is_named():
    error = _refused(ChatCompletionRequest, {"model": "x"})
    assert error.param == "messages" and "required" in error.message.lower()


def test_unknown_fields_and_lenient_types_pass():
    # What real clients send beyond what llamita reads (the openai SDK, LangChain, Open WebUI).
    body = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "developer", "content": "d"},
            {"role": "user", "content": [{"type": "text", "text": "hola", "cache_control": {}}], "name": "ana"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "content": {"temp": 21}, "tool_call_id": "1"},
            {"role": "ipython", "content": [1, 2]},
        ],
        "temperature": 1,
        "top_p": 1,
        "presence_penalty": 0,
        "max_tokens": None,
        "user": "u-1",
        "parallel_tool_calls": False,
        "metadata": {"a": "b"},
        "service_tier": "auto",
        "keep_alive": -1,
        "stop": "\n",
        "response_format": "json_object",
        "n": MAX_N,
        "store": False,
    }
    request = parse_body(ChatCompletionRequest, body)
    assert request.temperature == 1.0 and request.model_extra["user"] == "u-1"
    parse_body(CompletionRequest, {"prompt": [1, 2, 3], "echo": True, "max_tokens": 0, "logprobs": MAX_LOGPROBS})
    parse_body(
        OllamaChatRequest,
        {
            "model": "m",
            "keep_alive": "5m",
            "think": False,
            "options": {"num_thread": 4, "mirostat": 0, "temperature": 0},
        },
    )
    parse_body(OllamaGenerateRequest, {"model": "m"})  # only loads the model


def _body_schema(doc: dict, path: str) -> dict:
    return doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


MODEL_ROUTES = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/api/chat": OllamaChatRequest,
    "/api/generate": OllamaGenerateRequest,
    "/api/embed": OllamaEmbedRequest,
    "/api/embeddings": OllamaEmbeddingsRequest,
    "/v1/responses": ResponsesRequest,
}


@pytest.fixture(scope="module")
def doc() -> dict:
    """/openapi.json of the routers, as the app builds it (FastAPI's generator)."""
    from fastapi import FastAPI

    from llamita.serving import (
        collection_routes,
        embedding_routes,
        library_routes,
        ollama_routes,
        openai_routes,
        responses_routes,
    )

    app = FastAPI()
    for module in (openai_routes, responses_routes, embedding_routes, library_routes, ollama_routes, collection_routes):
        app.include_router(module.router)
    return openapi_document(app.routes)


def test_each_route_publishes_its_model(doc):
    for path, model in MODEL_ROUTES.items():
        properties = _body_schema(doc, path)["properties"]
        assert set(properties) == set(model.model_fields), path  # aliases aside, none here
        assert "422" not in doc["paths"][path]["post"]["responses"]
    # Only the published operations: not model management that downloads or deletes models.
    assert "/api/pull" not in doc["paths"] and "/api/delete" not in doc["paths"]
    assert "/glass/tokens" not in doc["paths"]


def test_the_schema_states_the_limits(doc):
    chat = _body_schema(doc, "/v1/chat/completions")
    assert chat["required"] == ["messages"] and chat["additionalProperties"] is True
    props = chat["properties"]
    assert props["n"] == {"type": "integer", "minimum": 1, "maximum": MAX_N}
    assert props["top_logprobs"] == {"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS}
    assert props["max_tokens"] == {"type": "integer", "minimum": 1}
    assert props["collections"]["maxItems"] == MAX_COLLECTIONS
    rag = doc["components"]["schemas"]["RagSettings"]["properties"]
    assert rag["top"]["maximum"] == MAX_TOP
    legacy = _body_schema(doc, "/v1/completions")["properties"]
    assert legacy["logprobs"]["maximum"] == MAX_LOGPROBS and legacy["max_tokens"]["minimum"] == 0
    refs = {r["$ref"].rsplit("/", 1)[-1] for r in props["messages"]["items"]["oneOf"]}
    assert refs <= set(doc["components"]["schemas"])
