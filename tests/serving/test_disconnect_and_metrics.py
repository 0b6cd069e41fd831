"""A client that goes away has its request aborted at once; /metrics reports the server."""

from __future__ import annotations

import logging
import time

import httpx

from serving_helpers import wait_idle

LONG = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 2000, "ignore_eos": True}


def test_stream_disconnect_aborts(server):
    aborted = server.loop.engine.stats.requests_aborted
    with httpx.Client(base_url=server.url, timeout=30) as c:
        with c.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
            assert server.loop.engine.has_unfinished()
    assert wait_idle(server.loop, timeout=5)
    assert server.loop.engine.stats.requests_aborted == aborted + 1
    assert server.loop.engine.blocks.usage == 0.0  # its KV blocks are free
    r = httpx.post(
        server.url + "/api/chat",
        json={"messages": LONG["messages"], "stream": False, "options": {"num_predict": 2}},
        timeout=30,
    )
    assert r.status_code == 200


def test_whole_answer_disconnect_aborts(server, caplog):
    aborted = server.loop.engine.stats.requests_aborted
    with caplog.at_level(logging.INFO):
        try:
            httpx.post(server.url + "/v1/chat/completions", json=LONG, timeout=httpx.Timeout(30, read=0.5))
        except httpx.ReadTimeout:
            pass
        assert wait_idle(server.loop, timeout=5)
        time.sleep(0.2)  # the handler logs after the engine has let the request go
    assert server.loop.engine.stats.requests_aborted == aborted + 1
    # A hang-up is normal: one line, no error and no traceback in the server's log.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text and "Exception in ASGI application" not in caplog.text
    assert [r for r in caplog.records if "client disconnected" in r.getMessage()]


def test_metrics(server):
    httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=30)
    text = httpx.get(server.url + "/metrics", timeout=30).text
    for name in (
        'llamita_http_requests_total{route="/v1/completions",status="200"}',
        "llamita_queue_length",
        "llamita_running_sequences",
        "llamita_kv_cache_usage_ratio",
        "llamita_prefix_cache_hit_ratio",
        "llamita_prompt_tokens_total",
        "llamita_generation_tokens_total",
        "llamita_time_to_first_token_seconds_count",
        "llamita_inter_token_latency_seconds_count",
    ):
        assert name in text, name
    generated = next(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("llamita_generation_tokens_total")
    )
    assert generated >= 3
