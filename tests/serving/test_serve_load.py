"""Load: 32 concurrent streaming clients for a bounded time on loopback, a quarter of them hanging
up after a few chunks. Every completed greedy answer equals the single-request answer of the
static-cache path (LLM.chat), every abandoned request frees its KV blocks, resident memory comes
back to its baseline, and no request waits forever (--request-timeout; tested on its own below).

LLAMITA_LOAD_SECONDS=120 runs the load longer than the suite's 20 s."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from dataclasses import dataclass, field

import httpx
import pytest

from llamita.sampling_params import SamplingParams

from serving_helpers import start_server, wait_idle

CHAT = "/v1/chat/completions"
CLIENTS = 32
SECONDS = float(os.environ.get("LLAMITA_LOAD_SECONDS", "20"))
MAX_TOKENS = 16
REQUEST_TIMEOUT = 60.0  # the server's --request-timeout under load: a bound, never reached here
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "What is 2 + 2?",
    "Say hello in Spanish.",
    "What do llamas eat?",
    "Write a haiku about rain.",
    "Who wrote Don Quixote?",
    "What is the boiling point of water?",
]


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, completed requests
    wrong: list[tuple[int, str]] = field(default_factory=list)  # (question, text) unlike the reference
    errors: list[str] = field(default_factory=list)
    disconnects: int = 0
    peak_rss: int = 0


def sse_data(line: str) -> str | None:
    return line[len("data: ") :] if line.startswith("data: ") else None


async def one_request(http: httpx.AsyncClient, i: int, hang_up: bool, refs: list[str], result: LoadResult) -> None:
    """One streamed chat: read it to [DONE] and check its text, or hang up after 3 chunks."""
    body = {
        "messages": messages(i),
        "stream": True,
        "temperature": 0,
        **({"max_tokens": 400, "ignore_eos": True} if hang_up else {"max_tokens": MAX_TOKENS}),
    }
    started = time.perf_counter()
    text, chunks, done = "", 0, False
    async with http.stream("POST", CHAT, json=body) as r:
        if r.status_code != 200:
            result.errors.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            return
        async for line in r.aiter_lines():
            data = sse_data(line)
            if data is None:
                continue
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                result.errors.append(str(event["error"]))
                return
            chunks += 1
            text += event["choices"][0]["delta"].get("content") or ""
            if hang_up and chunks == 3:
                result.disconnects += 1
                return  # leaving the block closes the connection mid-stream
    if not done:
        result.errors.append("the stream ended without [DONE]")
        return
    result.latencies.append(time.perf_counter() - started)
    if text != refs[i % len(QUESTIONS)]:
        result.wrong.append((i % len(QUESTIONS), text))


async def load(url: str, refs: list[str], seconds: float, clients: int) -> LoadResult:
    result = LoadResult(peak_rss=rss_bytes())
    end = time.monotonic() + seconds

    async def client(n: int) -> None:
        # A quarter of the clients hang up mid-stream; each client walks through the questions.
        async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT + 30) as http:
            k = 0
            while time.monotonic() < end:
                try:
                    await one_request(http, n + k, hang_up=n % 4 == 0, refs=refs, result=result)
                except httpx.HTTPError as e:
                    result.errors.append(f"{type(e).__name__}: {e}")
                k += 1

    async def watch_memory() -> None:
        while time.monotonic() < end:
            result.peak_rss = max(result.peak_rss, rss_bytes())
            await asyncio.sleep(0.2)

    await asyncio.gather(watch_memory(), *(client(n) for n in range(clients)))
    return result


@pytest.fixture(scope="module")
def references(llm_f32) -> list[str]:
    """Each question's greedy answer, one request at a time through LLM (the static-cache path)."""
    return [
        llm_f32.chat(messages(i), SamplingParams(temperature=0, max_tokens=MAX_TOKENS)).text
        for i in range(len(QUESTIONS))
    ]


def test_32_streaming_clients_with_disconnects(loaded, references, record_property):
    running, stop = start_server(
        loaded, kv_cache_tokens=4096, max_running=16, max_queue=64, request_timeout=REQUEST_TIMEOUT
    )
    try:
        engine = running.loop.engine
        # Warm up at full batch (the allocator's pools for a 16-row step), then take the baseline.
        asyncio.run(load(running.url, references, 0.1, 16))
        assert wait_idle(running.loop)
        gc.collect()
        before, aborted = rss_bytes(), engine.stats.requests_aborted
        started = time.monotonic()
        result = asyncio.run(load(running.url, references, SECONDS, CLIENTS))
        elapsed = time.monotonic() - started
        assert wait_idle(running.loop, timeout=10), "requests were still held after every client left"
        gc.collect()
        after = rss_bytes()

        latencies = sorted(result.latencies)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        figures = {
            "clients": CLIENTS,
            "seconds": round(elapsed, 1),
            "completed": len(latencies),
            "disconnected": result.disconnects,
            "errors": len(result.errors),
            "p50_s": round(latencies[len(latencies) // 2], 2),
            "p99_s": round(p99, 2),
            "rss_before_mib": before >> 20,
            "rss_peak_mib": result.peak_rss >> 20,
            "rss_after_mib": after >> 20,
        }
        record_property("load", figures)
        print("load:", figures)

        assert result.errors == []
        assert result.wrong == []
        assert len(latencies) >= CLIENTS and result.disconnects >= CLIENTS // 4
        # Every hung-up request was aborted by the server (none ran on to its 400 tokens) and
        # the engine holds nothing: no sequence, no KV block.
        assert engine.stats.requests_aborted - aborted == result.disconnects
        assert engine.num_running == 0 and engine.num_waiting == 0 and engine.blocks.usage == 0.0
        assert latencies[-1] < REQUEST_TIMEOUT
        # Memory back near its baseline: the KV cache is allocated up front, so what a leak of
        # requests, streams or sinks would add shows here; 64 MiB leaves room for the allocator.
        assert after - before < 64 << 20, figures
    finally:
        stop()


def test_request_timeout_stops_running_and_queued_requests(loaded):
    """--request-timeout: the running stream gets an error event then [DONE]; the request queued
    behind it (one place in the batch) gets a 504; both free everything and the server goes on."""
    running, stop = start_server(loaded, kv_cache_tokens=4096, max_running=1, request_timeout=2.0)
    long = {"messages": messages(0), "max_tokens": 4000, "ignore_eos": True}

    async def both() -> tuple[list[str], httpx.Response, float, float]:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:

            async def stream() -> list[str]:
                async with http.stream("POST", CHAT, json={**long, "stream": True}) as r:
                    assert r.status_code == 200
                    return [d async for line in r.aiter_lines() if (d := sse_data(line)) is not None]

            started = time.perf_counter()
            first = asyncio.create_task(stream())
            await asyncio.sleep(0.2)  # the stream holds the one running place
            sent = time.perf_counter()
            queued = await http.post(CHAT, json=long)
            waited = time.perf_counter() - sent
            return await first, queued, waited, time.perf_counter() - started

    try:
        events, queued, waited, elapsed = asyncio.run(both())
        assert elapsed < 10
        error = json.loads(events[-2])["error"]
        assert events[-1] == "[DONE]" and error["code"] == "request_timeout" and "2 s" in error["message"]
        assert all("error" not in json.loads(e) for e in events[:-2])  # tokens came before the stop
        assert queued.status_code == 504 and queued.json()["error"]["code"] == "request_timeout"
        # The queued request's clock ran from its arrival, not from its first step (at ~2 s,
        # when the stream was stopped): it ended ~2 s after it was sent, not ~4 s.
        assert waited < 3.0, waited
        assert wait_idle(running.loop) and running.loop.engine.blocks.usage == 0.0
        r = httpx.post(running.url + CHAT, json={"messages": messages(1), "max_tokens": 2}, timeout=30)
        assert r.status_code == 200  # still serving
    finally:
        stop()
