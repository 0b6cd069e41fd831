"""EngineLoop: the one thread that owns the LLMEngine; HTTP handlers talk to it through queues.

    loop = EngineLoop(engine, max_queue=64); loop.start()
    stream = await loop.submit(prompt_ids, params)   # raises what add_request raises, or QueueFull
    async for out in stream: ...                      # RequestOutputs of this request only
    stream.close()                                    # aborts it if it has not finished

Handlers run on the asyncio event loop; the engine thread sleeps while there is no work and
steps the continuous batch while there is. Between two steps it applies every new request and
abort it was sent, so a client that goes away stops costing KV blocks before the next step.
Outputs reach each request's own asyncio.Queue through `call_soon_threadsafe`.

One thread steps every started EngineLoop of the process, each in turn (`_EngineThread`): the
models a server holds share it. torch's OpenMP keeps a team of worker threads for every thread
that runs parallel ops, and GNU OpenMP cuts every team's spin-wait to almost nothing once the
teams' workers outnumber the cores: with a second model's engine thread alive beside the
first, a matmul of the default model's decode step took 228 instead of 152 us (2 threads,
2-core AMD EPYC). The thread ends when the last loop stops, and its team with it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from llamita.engine.llm_engine import LLMEngine, RequestOutput
from llamita.errors import LlamitaError
from llamita.sampling_params import SamplingParams

log = logging.getLogger(__name__)
T = TypeVar("T")


class QueueFullError(LlamitaError):
    """Too many requests are waiting for the engine; the client should retry later."""


class EngineFailure(LlamitaError):
    """The engine failed while running a request (a bug or an out-of-memory); the request ended."""


class ServerShuttingDownError(LlamitaError):
    """The server is stopping: requests still queued or running were ended, new ones are refused."""


class RequestTimeoutError(LlamitaError):
    """A request was queued or running longer than the server's --request-timeout; it was aborted."""


class LatencyObserver(Protocol):
    """Receives per-token timings (seconds) measured by the engine thread."""

    def first_token(self, seconds: float) -> None: ...

    def token_gap(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class LoopSnapshot:
    """Engine state published by the engine thread after each step, for metrics and /api/ps.
    Reading it from another thread is safe: it is replaced whole, never changed."""

    waiting: int = 0
    running: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV blocks in use (0..1)
    prefix_cache_hit_rate: float = 0.0  # fraction of looked-up prompt tokens found cached
    prompt_tokens: int = 0  # run through the model since start (prefix-cache hits excluded)
    generation_tokens: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    engine_errors: int = 0


# What the engine thread sends to a request's queue besides RequestOutputs.
_ACCEPTED = object()


@dataclass
class _Add:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sink: _Sink
    adapter: str | None = None  # LoRA adapter name; None: the base model


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Job:
    """Work on the model outside the batch (embeddings, prompt scoring), run between steps."""

    fn: Callable[[LLMEngine], Any]
    sink: _Sink


_STOP = object()


@dataclass
class _Sink:
    """The asyncio side of one request: its queue and the event loop that reads it."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    submitted_at: float = field(default_factory=time.perf_counter)
    last_token_at: float | None = None

    def put(self, item: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed (server shutting down): nobody reads
            pass


def _deliver(items: list[tuple[asyncio.Queue[object], RequestOutput]]) -> None:
    for queue_, out in items:
        queue_.put_nowait(out)


class RequestStream:
    """The outputs of one request, as an async iterator. Ends after the finishing output;
    raises EngineFailure if the engine failed on it."""

    def __init__(self, owner: EngineLoop, request_id: str, sink: _Sink) -> None:
        self.request_id = request_id
        self._owner = owner
        self._sink = sink
        self.finished = False

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._outputs()

    async def _outputs(self) -> AsyncIterator[RequestOutput]:
        while not self.finished:
            item = await self._sink.queue.get()
            if isinstance(item, BaseException):
                self.finished = True
                raise item
            assert isinstance(item, RequestOutput)
            self.finished = item.finished
            yield item

    def close(self) -> None:
        """Abort the request unless it already ended (a client disconnected, a handler failed).
        Not a coroutine: it runs in `finally` blocks of cancelled tasks, where awaiting fails."""
        if not self.finished:
            self.finished = True
            self._owner.abort(self.request_id)


class EngineLoop:
    def __init__(
        self,
        engine: LLMEngine,
        *,
        max_queue: int = 64,
        observer: LatencyObserver | None = None,
        request_timeout: float | None = None,
    ) -> None:
        """max_queue: most requests that may wait for a place in the running batch; one more
        is refused with QueueFullError (HTTP 503). request_timeout: seconds a request may spend
        queued and running together before it is aborted with RequestTimeoutError; None: no limit."""
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        if request_timeout is not None and not request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {request_timeout}")
        self.engine = engine
        self.max_queue = max_queue
        self.request_timeout = request_timeout
        self.observer = observer
        self.snapshot = LoopSnapshot()
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._sinks: dict[str, _Sink] = {}  # owned by the engine thread
        self._pending = 0  # submitted, not yet taken by the engine thread (any thread)
        self._pending_lock = threading.Lock()  # also orders every put before _STOP, see stop()
        self._stopping = False
        self._ids = itertools.count()
        self._errors = 0
        self._max_running = engine.max_running
        self._started = False
        self._stopped = threading.Event()  # set by the engine thread when it has let go of this loop

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._started = True
        _ENGINE_THREAD.add(self)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the engine thread to let go of this loop after its current step and wait for it.
        Requests still queued or running end with ServerShuttingDownError; later submits are
        refused with it."""
        with self._pending_lock:  # no submit puts work behind _STOP, where nobody would answer it
            self._stopping = True
            alive = self.alive
            if alive:
                self._send(_STOP)
        if alive and not _ENGINE_THREAD.is_current():
            self._stopped.wait(timeout)

    @property
    def alive(self) -> bool:
        return self._started and not self._stopped.is_set() and _ENGINE_THREAD.running

    def _send(self, item: object) -> None:
        self._inbox.put(item)
        _ENGINE_THREAD.wake()

    @property
    def num_waiting(self) -> int:
        """Requests not yet running: still in the inbox, or in the engine's waiting queue."""
        return self._pending + self.snapshot.waiting

    def _would_wait(self) -> int:
        """How many requests would be waiting if one more arrived now (a free place in the
        running batch takes a new request at once)."""
        free = max(0, self._max_running - self.snapshot.running)
        return max(0, self.num_waiting + 1 - free)

    # -- called from the event loop -------------------------------------------------------------
    async def submit(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None, adapter: str | None = None
    ) -> RequestStream:
        """Queue a request and wait until the engine accepted it. Raises QueueFullError, or the
        engine's InvalidParameterError / ContextOverflowError (nothing is left queued then)."""
        self._check_running()
        if self._would_wait() > self.max_queue:
            raise QueueFullError(
                f"{self.num_waiting} requests are already waiting for the engine "
                f"(--max-queue {self.max_queue}); retry shortly"
            )
        request_id = request_id or f"req-{next(self._ids)}"
        sink = _Sink(asyncio.get_running_loop())
        with self._pending_lock:
            self._check_running()
            self._pending += 1
            self._send(_Add(request_id, list(prompt_ids), params, sink, adapter))
        first = await sink.queue.get()
        if isinstance(first, BaseException):
            raise first
        assert first is _ACCEPTED
        return RequestStream(self, request_id, sink)

    def abort(self, request_id: str) -> None:
        self._send(_Abort(request_id))

    async def call(self, fn: Callable[[LLMEngine], T]) -> T:
        """Run fn(engine) on the engine thread between two steps and return its result (or
        raise its exception): the model is only ever used by that thread."""
        self._check_running()
        sink = _Sink(asyncio.get_running_loop())
        with self._pending_lock:
            self._check_running()
            self._send(_Job(fn, sink))
        result = await sink.queue.get()
        if isinstance(result, BaseException):
            raise result
        return cast(T, result)  # the queue carries fn's result or its exception

    def _check_running(self) -> None:
        if self._stopping:
            raise ServerShuttingDownError("the server is shutting down; retry on its next start")
        if not self.alive:
            raise EngineFailure("the engine thread is not running")

    # -- the engine thread ------------------------------------------------------------------------
    def _turn(self) -> bool:
        """Apply what was sent, then run one step if there is work. False once stopped."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._fail_all(
                    ServerShuttingDownError("the server is shutting down; the request was stopped before its end")
                )
                return False
            self._apply(item)
        if self.request_timeout is not None:
            self._expire(time.perf_counter() - self.request_timeout)
        self._publish()  # new requests count as waiting while the step runs
        if self.engine.has_unfinished():
            self._step()
            self._publish()
        return True

    def _apply(self, item: object) -> None:
        if isinstance(item, _Job):
            try:
                item.sink.put(item.fn(self.engine))
            except Exception as e:  # typed errors become 400s, like a refused request
                item.sink.put(e)
            return
        if isinstance(item, _Abort):
            if self._sinks.pop(item.request_id, None) is not None:
                self.engine.abort(item.request_id)
            return
        assert isinstance(item, _Add)
        try:
            self.engine.add_request(item.request_id, item.prompt_ids, item.params, item.adapter)
        except Exception as e:  # typed errors go back to the client as 400s, others as 500s
            with self._pending_lock:
                self._pending -= 1
            item.sink.put(e)
            return
        self._sinks[item.request_id] = item.sink
        # Publish before the request leaves `_pending` and before its submitter hears back, so
        # `_would_wait` never misses it (a stale snapshot let --max-queue admit one too many).
        self._publish()
        with self._pending_lock:
            self._pending -= 1
        item.sink.put(_ACCEPTED)

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:
            # The batch's state is unknown after a failed step: end every request the engine
            # holds, free their blocks, and keep the thread alive for the next requests.
            log.exception("engine step failed")
            self._errors += 1
            self._fail_all(EngineFailure(f"the engine failed: {type(e).__name__}: {e}"))
            return
        now = time.perf_counter()
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[object], RequestOutput]]] = {}
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if sink is None:
                continue
            if out.token_ids and self.observer is not None:
                if sink.last_token_at is None:
                    self.observer.first_token(now - sink.submitted_at)
                else:
                    self.observer.token_gap(now - sink.last_token_at)
            if out.token_ids:
                sink.last_token_at = now
            if out.finished:
                del self._sinks[out.request_id]
            batches.setdefault(sink.loop, []).append((sink.queue, out))
        # One wake-up of each event loop a step, not one per request: at 8 streams, writing the
        # loop's self-pipe per output was 3% of the engine thread.
        for event_loop, items in batches.items():
            try:
                event_loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop is closed (server shutting down): nobody reads
                pass

    def _expire(self, deadline: float) -> None:
        """Abort every request submitted before `deadline` (perf_counter seconds), queued or
        running: its blocks are freed before the next step and its client gets the error."""
        for request_id, sink in list(self._sinks.items()):
            if sink.submitted_at < deadline:
                del self._sinks[request_id]
                self.engine.abort(request_id)
                sink.put(
                    RequestTimeoutError(
                        f"the request ran past the server's request timeout ({self.request_timeout:g} s, "
                        "--request-timeout) and was stopped; ask for fewer tokens or retry later"
                    )
                )

    def _fail_all(self, error: Exception) -> None:
        for request_id, sink in list(self._sinks.items()):
            try:
                self.engine.abort(request_id)
            except Exception:  # the engine is already broken; the request ends regardless
                log.exception("abort of %s failed", request_id)
            sink.put(error)
        self._sinks.clear()

    def _publish(self) -> None:
        engine, stats = self.engine, self.engine.stats
        self.snapshot = LoopSnapshot(
            engine.num_waiting,
            engine.num_running,
            engine.blocks.usage,
            engine.blocks.stats.hit_rate,
            stats.prompt_tokens,
            stats.generation_tokens,
            stats.requests_finished,
            stats.requests_aborted,
            self._errors,
        )


class _EngineThread:
    """The thread that steps every started EngineLoop in turn (see the module's docstring), while
    any has work; it sleeps until something is sent to one, and ends with the last loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loops: list[EngineLoop] = []
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def is_current(self) -> bool:
        return self._thread is threading.current_thread()

    def add(self, loop: EngineLoop) -> None:
        with self._lock:
            self._loops.append(loop)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llamita-engine", daemon=True)
                self._thread.start()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.clear()  # before looking: a send from now on wakes the wait below
            with self._lock:
                loops = list(self._loops)
                if not loops:
                    self._thread = None
                    return
            busy = False
            for loop in loops:
                try:
                    if loop._turn():
                        busy = busy or loop.engine.has_unfinished()
                        continue
                except Exception as e:  # a bug outside the step: that model ends, the others go on
                    log.exception("engine loop failed")
                    loop._fail_all(EngineFailure(f"the engine failed: {type(e).__name__}: {e}"))
                with self._lock:
                    self._loops.remove(loop)
                loop._stopped.set()
                busy = True  # look again at once: that may have been the last loop
            if not busy:
                self._wake.wait()


_ENGINE_THREAD = _EngineThread()
