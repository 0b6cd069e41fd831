"""EngineLoop without HTTP: a failing step fails its requests and the thread lives on."""

from __future__ import annotations

import asyncio

import pytest

from llamita.engine.llm_engine import LLMEngine
from llamita.errors import ContextOverflowError
from llamita.sampling_params import SamplingParams
from llamita.serving.engine_loop import EngineFailure, EngineLoop, QueueFullError


@pytest.fixture
def loop(loaded):
    engine_loop = EngineLoop(LLMEngine(loaded, kv_cache_tokens=256, max_running=1), max_queue=1)
    engine_loop.start()
    yield engine_loop
    engine_loop.stop()


async def collect(engine_loop: EngineLoop, ids: list[int], params: SamplingParams) -> str:
    stream = await engine_loop.submit(ids, params)
    return "".join([out.text async for out in stream])


def test_failed_step_fails_requests_and_keeps_serving(loop, monkeypatch):
    ids = loop.engine.tokenizer.encode("Hello")
    params = SamplingParams(temperature=0, max_tokens=4)
    real_step = loop.engine.step
    calls = []

    def broken_step():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated out of memory")
        return real_step()

    monkeypatch.setattr(loop.engine, "step", broken_step)

    async def main() -> str:
        with pytest.raises(EngineFailure, match="simulated out of memory"):
            await asyncio.wait_for(collect(loop, ids, params), 30)
        return await asyncio.wait_for(collect(loop, ids, params), 30)

    assert asyncio.run(main())
    assert loop.alive and not loop.engine.has_unfinished() and loop.snapshot.engine_errors == 1


def test_add_errors_come_back_and_queue_limit(loop):
    params = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)
    ids = loop.engine.tokenizer.encode("Hello")

    async def main() -> None:
        with pytest.raises(ContextOverflowError):
            await loop.submit(list(range(300)), params)
        running = await loop.submit(ids, params)  # takes the one running place
        waiting = await loop.submit(ids, params)  # waits (max_queue 1)
        with pytest.raises(QueueFullError):
            await loop.submit(ids, params)
        running.close()
        waiting.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_two_models_share_one_engine_thread_that_ends_with_the_last(loaded, monkeypatch):
    """Every started loop is stepped by the same thread (a second thread running torch ops would
    slow both: serving/engine_loop.py), each answers as alone, and the thread ends when the
    last loop stops."""
    import threading

    from llamita.serving import engine_loop as module

    # A thread of this test's own: servers of other tests' session fixtures share the module's.
    monkeypatch.setattr(module, "_ENGINE_THREAD", module._EngineThread())

    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    first = EngineLoop(LLMEngine(loaded, kv_cache_tokens=256, max_running=2))
    second = EngineLoop(LLMEngine(loaded, kv_cache_tokens=256, max_running=2))
    ids = first.engine.tokenizer.encode("Hello")
    stepped_on: dict[str, set[threading.Thread]] = {"first": set(), "second": set()}
    for name, engine_loop in (("first", first), ("second", second)):
        real_step = engine_loop.engine.step

        def step(real_step=real_step, name=name):
            stepped_on[name].add(threading.current_thread())
            return real_step()

        engine_loop.engine.step = step  # type: ignore[method-assign]
    first.start()
    second.start()
    try:

        async def both() -> list[str]:
            return list(await asyncio.gather(collect(first, ids, params), collect(second, ids, params)))

        answers = asyncio.run(asyncio.wait_for(both(), 60))
    finally:
        first.stop()
    alone = EngineLoop(LLMEngine(loaded, kv_cache_tokens=256, max_running=2))
    assert second.alive and not first.alive
    second.stop()
    assert not second.alive
    threads = stepped_on["first"] | stepped_on["second"]
    assert len(threads) == 1 and threads != {threading.current_thread()}
    (engine_thread,) = threads
    engine_thread.join(5)
    assert not engine_thread.is_alive()  # ended with the last loop
    alone.start()
    try:
        assert asyncio.run(asyncio.wait_for(collect(alone, ids, params), 60)) == answers[0] == answers[1]
    finally:
        alone.stop()
