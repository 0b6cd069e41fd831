"""Bad requests get OpenAI-shaped 4xx answers, a full queue 503, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from serving_helpers import start_server, wait_idle

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def small(loaded):
    """A server whose KV cache holds 256 tokens, so that one request's window is 256."""
    running, stop = start_server(loaded, kv_cache_tokens=256, max_running=1, max_queue=0)
    yield running
    stop()


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(
    "body, param",
    [
        (b"{not json", None),
        (b"\xff\xfe{}", None),
        (b"[1, 2]", None),
        (b'{"messages": "hello"}', "messages"),
        # The request models name the field inside the list (serving/protocol.py).
        (b'{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": -1}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 100}', "n"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stop": [""]}', "stop[0]"),
    ],
)
def test_bad_chat_bodies(server, body, param):
    r = httpx.post(server.url + CHAT, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert error_of(r, 400)["param"] == param


def test_bad_completion_prompts_and_tokens(server):
    for prompt in ([], [[1, 2], "x"], [10**9], True):
        r = httpx.post(server.url + "/v1/completions", json={"prompt": prompt}, timeout=30)
        error_of(r, 400)
    error_of(httpx.post(server.url + "/detokenize", json={"tokens": [-1]}, timeout=30), 400)


def test_unknown_model_and_route(server):
    assert (
        error_of(httpx.post(server.url + CHAT, json={"model": "gpt-4+nope", "messages": HELLO}, timeout=30), 404)[
            "code"
        ]
        == "model_not_found"
    )
    assert error_of(httpx.get(server.url + "/v1/nothing", timeout=30), 404)["type"] == "not_found_error"


def test_prompt_over_the_context(small):
    long = " ".join(["word"] * 400)
    r = httpx.post(
        small.url + CHAT, json={"messages": [{"role": "user", "content": long}], "max_tokens": 1}, timeout=30
    )
    error = error_of(r, 400)
    assert error["code"] == "context_length_exceeded" and "too many" in error["message"]
    r = httpx.post(small.url + CHAT, json={"messages": HELLO, "max_tokens": 2}, timeout=30)
    assert r.status_code == 200  # still serving


def test_queue_full_is_503_with_retry_after(small):
    body = {"messages": HELLO, "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=small.url, timeout=30) as c:
        with c.stream("POST", CHAT, json=body) as first:
            next(first.iter_lines())  # the one running place is taken
            r = c.post(CHAT, json={"messages": HELLO, "max_tokens": 1})
            assert error_of(r, 503)["code"] == "queue_full" and r.headers["retry-after"] == "1"
    assert wait_idle(small.loop)  # the first stream's abort has reached the engine
    assert httpx.post(small.url + CHAT, json={"messages": HELLO, "max_tokens": 1}, timeout=30).status_code == 200


def test_tokenize_detokenize(server, llm_f32):
    r = httpx.post(server.url + "/tokenize", json={"content": "Hola, ¿qué tal?"}, timeout=30).json()
    assert r["tokens"] == llm_f32.encode_prompt("Hola, ¿qué tal?")
    back = httpx.post(server.url + "/detokenize", json={"tokens": r["tokens"]}, timeout=30).json()
    assert back["content"] == "Hola, ¿qué tal?"
    assert httpx.post(server.url + "/tokenize", json={"prompt": "Hola"}, timeout=30).json()["tokens"]
