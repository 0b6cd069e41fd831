"""Running one HTTP request's completions on the engine loop: submit them, merge their outputs,
accumulate them, and abort them all if the client goes away. Shared by the OpenAI and Ollama
routes; they only shape what comes out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from starlette.requests import ClientDisconnect

from llamita.engine.llm_engine import RequestOutput, TokenLogprob
from llamita.sampling_params import SamplingParams
from llamita.serving.engine_loop import EngineLoop, RequestStream


@dataclass
class Completion:
    """Everything one request produced so far, with wall-clock timings (perf_counter seconds)."""

    index: int
    started_at: float = field(default_factory=time.perf_counter)
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    first_output_at: float | None = None
    finished_at: float | None = None

    def add(self, out: RequestOutput) -> None:
        now = time.perf_counter()
        if self.first_output_at is None:
            self.first_output_at = now
        self.text += out.text
        self.token_ids += out.token_ids
        self.logprobs += out.logprobs  # one entry per new token (none for a stop token)
        self.prompt_tokens, self.completion_tokens = out.prompt_tokens, out.completion_tokens
        self.cached_tokens = out.cached_tokens
        if out.finished:
            self.finish_reason, self.finished_at = out.finish_reason, now


class Generation:
    """The n completions of one HTTP request. Use as an async context manager: leaving it
    aborts whatever has not finished."""

    def __init__(self, loop: EngineLoop, streams: list[RequestStream]) -> None:
        self._loop = loop
        self.streams = streams
        self.completions = [Completion(i) for i in range(len(streams))]

    @classmethod
    async def start(
        cls, loop: EngineLoop, prompts: list[list[int]], params: list[SamplingParams], adapter: str | None = None
    ) -> Generation:
        """Submit one request per (prompt, params), all with LoRA `adapter` (None: none); if
        one is refused, abort those already in."""
        streams: list[RequestStream] = []
        try:
            for ids, p in zip(prompts, params):
                streams.append(await loop.submit(ids, p, adapter=adapter))
        except BaseException:
            for s in streams:
                s.close()
            raise
        return cls(loop, streams)

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for s in self.streams:
            s.close()

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(choice index, output) as they come, from all completions; each is also added to
        `completions`."""
        if len(self.streams) == 1:  # the common case, without a task per stream
            async for out in self.streams[0]:
                self.completions[0].add(out)
                yield 0, out
            return
        merged: asyncio.Queue[tuple[int, RequestOutput] | BaseException | None] = asyncio.Queue()

        async def pump(i: int, stream: RequestStream) -> None:
            try:
                async for out in stream:
                    await merged.put((i, out))
                await merged.put(None)
            except BaseException as e:  # the reader re-raises it
                await merged.put(e)

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await merged.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                i, out = item
                self.completions[i].add(out)
                yield i, out
        finally:
            for t in tasks:
                t.cancel()

    async def run_to_end(self, request: Request) -> list[Completion]:
        """Collect every completion; abort all if the client disconnects first."""
        watcher = asyncio.create_task(_wait_for_disconnect(request))
        collector = asyncio.create_task(self._drain())
        try:
            done, _ = await asyncio.wait({watcher, collector}, return_when=asyncio.FIRST_COMPLETED)
            if collector not in done:
                self.close()
                collector.cancel()
                raise ClientDisconnect()
            collector.result()  # re-raises an engine failure
            return self.completions
        finally:
            watcher.cancel()

    async def _drain(self) -> None:
        async for _ in self.outputs():
            pass


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
