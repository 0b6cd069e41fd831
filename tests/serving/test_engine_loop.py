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
