"""Bad requests of every kind get a 4xx JSON error in OpenAI's shape, and the server keeps
serving: hand-written cases (malformed JSON, wrong types, missing fields, unknown roles, out of
range parameters, non-UTF-8 bytes, a body over the limit, a prompt over the context), then a
bounded schemathesis run over our own /openapi.json, valid and invalid data, that must find no
5xx. The engine is scripted (a fixed short answer): what is tested is the HTTP layer, fast.
"""

from __future__ import annotations

import json

import httpx
import pytest

from llamita.serving.protocol import MAX_N

from serving_helpers import ScriptedEngine, start_server

schemathesis = pytest.importorskip("schemathesis")

CASES_PER_OPERATION = 30  # half valid, half invalid, over 16 operations


class _Engine(ScriptedEngine):
    """The scripted engine with what the embedding routes read."""

    def __init__(self, loaded, script: str) -> None:
        super().__init__(loaded, script)
        self.vocab_size = min(loaded.config.vocab_size, loaded.tokenizer.vocab_size)


@pytest.fixture(scope="module")
def scripted(loaded):
    running, stop = start_server(loaded, engine=_Engine(loaded, "Hola, que tal?"))
    yield running
    stop()


def _is_openai_error(r: httpx.Response) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) >= {"message", "type", "param", "code"}


CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hola"}]
BAD = [
    (CHAT, b"{not json", 400),
    (CHAT, b"[1, 2]", 400),
    (CHAT, b"", 400),
    (CHAT, b'{"messages": "hola"}', 400),
    (CHAT, b"{}", 400),
    (CHAT, json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400),
    (CHAT, json.dumps({"messages": [{"content": "x"}]}).encode(), 400),
    (CHAT, json.dumps({"messages": [{"role": "user", "content": 7}]}).encode(), 400),
    (CHAT, json.dumps({"messages": [1]}).encode(), 400),
    (CHAT, json.dumps({"messages": USER, "temperature": -1}).encode(), 400),
    (CHAT, json.dumps({"messages": USER, "temperature": "hot"}).encode(), 400),
    (CHAT, json.dumps({"messages": USER, "top_p": 7}).encode(), 400),
    (CHAT, json.dumps({"messages": USER, "max_tokens": -5}).encode(), 400),
    (CHAT, json.dumps({"messages": USER, "n": 10**6}).encode(), 400),
    (CHAT, json.dumps({"messages": USER, "stop": [1, 2]}).encode(), 400),
    (CHAT, json.dumps({"messages": USER, "stream": "yes"}).encode(), 400),
    (CHAT, json.dumps({"messages": USER, "model": "gpt-9+nope"}).encode(), 404),
    (CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400),
    (CHAT, b'{"messages": 1e999999}', 400),
    (CHAT, b"[" * 100_000 + b"]" * 100_000, 400),
    ("/v1/completions", json.dumps({"prompt": 5}).encode(), 400),
    ("/v1/completions", json.dumps({"prompt": "x", "logprobs": 99}).encode(), 400),
    ("/v1/embeddings", json.dumps({"input": {"a": 1}}).encode(), 400),
    ("/api/chat", json.dumps({"messages": [{"role": "user", "content": "x"}], "options": 3}).encode(), 400),
    ("/api/generate", json.dumps({"prompt": "x", "options": {"temperature": "x"}}).encode(), 400),
    ("/tokenize", json.dumps({"content": None}).encode(), 400),
    ("/detokenize", json.dumps({"tokens": [-1]}).encode(), 400),
]


@pytest.mark.parametrize("path, body, status", BAD, ids=[f"bad-{i}" for i in range(len(BAD))])
def test_bad_requests_get_a_json_4xx(scripted, path, body, status):
    r = httpx.post(scripted.url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text[:300]
    _is_openai_error(r)


@pytest.mark.parametrize(
    "path, body, param",
    [
        (CHAT, {"messages": [*USER, {"role": "user", "content": 7}]}, "messages[1].content"),
        (CHAT, {"messages": USER, "rag": {"mode": "magic"}, "collections": ["c"]}, "rag.mode"),
        ("/v1/completions", {"prompt": [[1, 2], [3, "x"]]}, "prompt[1][1]"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ("/api/chat", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ("/api/generate", {"prompt": "x", "options": {"num_predict": "many"}}, "options.num_predict"),
        ("/api/embed", {"input": ["a", 3]}, "input[1]"),
    ],
)
def test_a_wrong_field_deep_in_a_body_is_named(scripted, path, body, param):
    r = httpx.post(scripted.url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text[:300]
    _is_openai_error(r)
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_fields_are_accepted(scripted):
    extra = {"user": "u-1", "metadata": {"k": "v"}, "parallel_tool_calls": False, "some_future_field": [1]}
    r = httpx.post(scripted.url + CHAT, json={"messages": USER, **extra}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hola, que tal?"
    r = httpx.post(
        scripted.url + "/api/chat",
        json={"messages": USER, "stream": False, "think": False, "options": {"num_thread": 2}},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["message"]["content"] == "Hola, que tal?"


def test_a_prompt_over_the_context_is_400(server):
    """Against the real engine (the scripted one has no context window)."""
    r = httpx.post(server.url + CHAT, json={"messages": [{"role": "user", "content": "palabra " * 20_000}]}, timeout=60)
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]
    _is_openai_error(r)


def test_a_body_over_the_limit_is_413_and_the_server_goes_on(scripted):
    huge = b'{"messages": [{"role": "user", "content": "' + b"a" * (9 << 20) + b'"}]}'
    r = httpx.post(scripted.url + CHAT, content=huge, timeout=30)
    assert r.status_code == 413
    _is_openai_error(r)

    def chunks():  # no Content-Length: the limit applies to what arrives
        for _ in range(10):
            yield b"a" * (1 << 20)

    r = httpx.post(scripted.url + CHAT, content=chunks(), timeout=30)
    assert r.status_code == 413
    ok = httpx.post(scripted.url + CHAT, json={"messages": USER}, timeout=30)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "Hola, que tal?"


def test_the_schema_is_served(scripted):
    doc = httpx.get(scripted.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.") and CHAT in doc["paths"]


def test_the_schema_states_the_real_limits(scripted):
    # The published document is the API contract: no fuzzing bound (the test's own speed
    # limits) and no vocabulary of one model in it.
    doc = httpx.get(scripted.url + "/openapi.json").json()
    chat = doc["paths"][CHAT]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "maximum" not in chat["max_tokens"] and chat["n"]["maximum"] == MAX_N
    assert "maxItems" not in chat["messages"]
    tokens = doc["paths"]["/detokenize"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "maximum" not in tokens["properties"]["tokens"]["items"]


def test_whole_answers_follow_the_published_models(scripted):
    """Non-streamed answers against our response models (extra fields forbidden, so a field
    added to the answer and not to the model fails here) and against the openai SDK's types."""
    from openai.types import Completion as SDKCompletion
    from openai.types.chat import ChatCompletion as SDKChatCompletion

    from llamita.serving.protocol import ChatCompletion, TextCompletion

    chat = httpx.post(scripted.url + CHAT, json={"messages": USER, "n": 2, "logprobs": True}, timeout=30).json()
    assert ChatCompletion.model_validate(chat).choices[1].message.content == "Hola, que tal?"
    SDKChatCompletion.model_validate(chat)
    text = httpx.post(scripted.url + "/v1/completions", json={"prompt": ["a", "b"]}, timeout=30).json()
    assert [c.index for c in TextCompletion.model_validate(text).choices] == [0, 1]
    SDKCompletion.model_validate(text)
    doc = httpx.get(scripted.url + "/openapi.json").json()
    answer = doc["paths"][CHAT]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["$ref"].endswith("/ChatCompletion") and "ChatCompletion" in doc["components"]["schemas"]


# The fuzzer's own bounds: short answers, few choices, short lists, ids inside the vocabulary,
# so ~450 generated requests stay fast against the scripted engine.
FUZZ_BOUNDS = {
    "max_tokens": {"maximum": 16},
    "max_completion_tokens": {"maximum": 16},
    "n": {"maximum": 2},
    "num_predict": {"maximum": 16},
    "messages": {"maxItems": 4},
    "prompt": {"maxItems": 2},
    "input": {"maxItems": 3},
    "stop": {"maxItems": 4},
}


def _fuzz_bounds(doc: dict, vocab: int) -> dict:
    """`doc` with FUZZ_BOUNDS applied to every property of those names (and to the list
    branch of a string-or-list), and /detokenize's ids kept below `vocab`."""

    def narrow(node):
        if isinstance(node, dict):
            for name, schema in (node.get("properties") or {}).items():
                for bound, value in FUZZ_BOUNDS.get(name, {}).items():
                    for target in [schema, *schema.get("oneOf", [])]:
                        if (bound == "maxItems") == (target.get("type") == "array"):
                            target[bound] = value
            for value in node.values():
                narrow(value)
        elif isinstance(node, list):
            for value in node:
                narrow(value)

    narrow(doc)
    detok = doc["paths"]["/detokenize"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    detok["properties"]["tokens"]["items"]["maximum"] = vocab - 1
    return doc


def test_schemathesis_finds_no_server_error(scripted):
    """Generated requests (valid and invalid bodies) over every documented operation: no 5xx,
    and the server still answers afterwards."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    doc = httpx.get(scripted.url + "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(_fuzz_bounds(doc, vocab=scripted.loop.engine.vocab_size))
    seen: dict[str, list] = {"requests": [], "5xx": []}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=CASES_PER_OPERATION // 2,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case):
                response = case.call(base_url=scripted.url, timeout=30)
                seen["requests"].append(response.status_code)
                if response.status_code >= 500:
                    seen["5xx"].append(
                        (case.method, case.path, repr(case.body)[:200], response.status_code, response.text[:200])
                    )

            try:
                run()
            except Unsatisfiable:  # nothing invalid to send (a GET without parameters)
                assert mode == schemathesis.GenerationMode.NEGATIVE
    assert len(seen["requests"]) >= 150, len(seen["requests"])
    assert not seen["5xx"], seen["5xx"][:5]
    assert httpx.post(scripted.url + CHAT, json={"messages": USER}, timeout=30).status_code == 200
    counts = {code: seen["requests"].count(code) for code in sorted(set(seen["requests"]))}
    print(f"schemathesis: {len(seen['requests'])} requests, status counts {counts}")


# ------------------------------------------------------------------ access


def test_cors_is_off_unless_origins_are_given(scripted, tmp_path):
    origin = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(scripted.url + CHAT, headers=origin)
    assert "access-control-allow-origin" not in r.headers
    r = httpx.post(scripted.url + CHAT, json={"messages": USER}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers

    from llamita.serving.app import create_app

    app = create_app(scripted.loop, "m", data_dir=tmp_path, cors_origins=("http://localhost:3000",))
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        ok = client.options(CHAT, headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
        assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = client.options(CHAT, headers=origin)
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    "host, key, warned",
    [
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
        ("0.0.0.0", None, True),
        ("192.168.1.10", None, True),
        ("::", None, True),
        ("0.0.0.0", "k", False),
    ],
)
def test_a_network_address_without_a_key_is_warned(host, key, warned):
    from llamita.serving.server import exposure_warning

    message = exposure_warning(host, key)
    assert (message is not None) == warned
    if warned:
        assert host in message and "--api-key" in message
