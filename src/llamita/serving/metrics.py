"""Prometheus metrics of one server, in its own registry (two apps in a process never share).

Counters that the engine keeps (tokens, finished requests) and its gauges (queue, batch, KV
cache) are read at scrape time from the engine thread's latest snapshot; latencies are
observed by the engine thread as each token comes out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llamita.serving.engine_loop import EngineLoop

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; a 135M model on a CPU answers in tens of milliseconds, an 8B one in seconds.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _EngineCollector(Collector):
    def __init__(self, loop: Callable[[], EngineLoop | None]) -> None:
        self._loop = loop

    def collect(self) -> Iterator[Metric]:
        loop = self._loop()
        if loop is None:
            return
        s = loop.snapshot
        yield GaugeMetricFamily(
            "llamita_queue_length", "Requests waiting for a place in the running batch.", value=loop.num_waiting
        )
        yield GaugeMetricFamily("llamita_running_sequences", "Requests in the running batch.", value=s.running)
        yield GaugeMetricFamily(
            "llamita_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use (0..1).", value=s.kv_cache_usage
        )
        yield GaugeMetricFamily(
            "llamita_prefix_cache_hit_ratio",
            "Fraction of looked-up prompt tokens found in the prefix cache since start.",
            value=s.prefix_cache_hit_rate,
        )
        yield CounterMetricFamily(
            "llamita_prompt_tokens",
            "Prompt tokens run through the model (prefix-cache hits excluded).",
            value=s.prompt_tokens,
        )
        yield CounterMetricFamily("llamita_generation_tokens", "Tokens generated.", value=s.generation_tokens)
        yield CounterMetricFamily("llamita_engine_errors", "Engine steps that failed.", value=s.engine_errors)


class _PoolCollector(Collector):
    """The model pool: how many models are loaded, and loads and unloads since start."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "llamita_loaded_models",
            "Models loaded in memory now (the default model included).",
            value=len(self._pool.loaded()),
        )
        yield CounterMetricFamily("llamita_model_loads", "Models loaded on demand since start.", value=self._pool.loads)
        yield CounterMetricFamily(
            "llamita_model_unloads",
            "Models unloaded (keep_alive ran out, evicted for memory, or asked to) since start.",
            value=self._pool.unloads,
        )


class ServerMetrics:
    """Implements EngineLoop's LatencyObserver (for every model's loop: the latency histograms
    cover all models; the engine gauges are the default model's)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._loop: EngineLoop | None = None
        self.requests = Counter(
            "llamita_http_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "llamita_time_to_first_token_seconds",
            "From a request's arrival at the engine queue to its first generated token.",
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.inter_token_latency = Histogram(
            "llamita_inter_token_latency_seconds",
            "Between two consecutive tokens of one request.",
            buckets=_ITL_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(lambda: self._loop))

    def watch(self, loop: EngineLoop) -> None:
        """Report this loop's engine and observe its token latencies."""
        self._loop = loop
        loop.observer = self

    def watch_pool(self, pool: Any) -> None:
        """Report the model pool (serving/model_pool.py's ModelPool)."""
        self.registry.register(_PoolCollector(pool))

    def first_token(self, seconds: float) -> None:
        self.time_to_first_token.observe(seconds)

    def token_gap(self, seconds: float) -> None:
        self.inter_token_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
