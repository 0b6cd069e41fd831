"""Decides, before each engine step, which requests run and on how many of their tokens.

Continuous batching: a request joins the running batch as soon as its prompt fits in the free
KV blocks, and leaves when it finishes; every running request that has its prompt computed
advances one token per step, and long prompts are computed in chunks (at most
`max_prefill_tokens` per step in all) so streams that are already running keep flowing.

When the KV blocks run out, the most recently arrived running request is preempted: its
blocks are released and it goes back to the front of the queue with every token it has so far
(prompt + generated). When it is admitted again those tokens are simply recomputed (most of
them straight from the prefix cache), its sampler keeps its random state, and its output goes
on exactly as if nothing had happened.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from llamita.engine.block_manager import BlockManager
from llamita.engine.sequence import SequenceState


@dataclass(eq=False)  # compared by identity: a request is in a queue or not
class Request:
    request_id: str
    arrival: int  # admission order; lower is older and keeps priority
    seq: SequenceState
    n_computed: int = 0  # leading tokens whose keys and values are in the cache
    cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    preemptions: int = 0
    admitted_once: bool = False
    adapter: int = -1  # the model's LoRA adapter slot this request runs with; -1: none

    @property
    def tokens(self) -> list[int]:
        return self.seq.history


@dataclass(eq=False)
class Work:
    """One request's share of a step: feed tokens[start:end] (end - start == 1 for decode)."""

    request: Request
    start: int
    end: int

    @property
    def completes(self) -> bool:
        """After this work every known token is computed, so the next one is sampled."""
        return self.end == len(self.request.tokens)


@dataclass
class Schedule:
    decode: list[Work] = field(default_factory=list)  # one token each, batched together
    prefill: list[Work] = field(default_factory=list)  # prompt chunks, one forward each

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill

    def add(self, work: Work) -> int:
        """Schedule `work`; return the prefill tokens it takes from the step's budget (a decode
        token takes none: running streams always advance)."""
        if work.end - work.start == 1 and work.completes:
            self.decode.append(work)
            return 0
        self.prefill.append(work)
        return work.end - work.start

    def drop(self, request: Request) -> None:
        """Take back the work of a request preempted after it was scheduled."""
        self.decode = [w for w in self.decode if w.request is not request]
        self.prefill = [w for w in self.prefill if w.request is not request]


class Scheduler:
    def __init__(self, blocks: BlockManager, max_running: int = 16, max_prefill_tokens: int = 512) -> None:
        self.blocks = blocks
        self.max_running = max_running
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: list[Request] = []  # kept sorted by arrival
        self.running: list[Request] = []  # kept sorted by arrival
        self.preemptions = 0

    def add(self, request: Request) -> None:
        bisect.insort(self.waiting, request, key=lambda r: r.arrival)

    def remove(self, request: Request) -> None:
        """Take a finished or aborted request out and release its blocks."""
        if request in self.running:
            self.running.remove(request)
        if request in self.waiting:
            self.waiting.remove(request)
        self.blocks.free(request.request_id)

    def schedule(self) -> Schedule:
        out = Schedule()
        budget = self.max_prefill_tokens
        for request in list(self.running):
            if request not in self.running:  # preempted while making room for an older one
                continue
            remaining = len(request.tokens) - request.n_computed
            n = 1 if remaining == 1 else min(remaining, budget)
            if n == 0:
                continue
            if not self._make_room(request, request.n_computed + n, out):
                continue  # it was the newest and got preempted itself
            budget -= out.add(Work(request, request.n_computed, request.n_computed + n))

        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            request = self.waiting[0]
            tokens = request.tokens
            # Keep a block spare per running request so they can grow next step; alone, a
            # request always fits (requests are sized to the pool when they are added).
            # Each adapter's keys and values are its own: its prefix cache is apart (+1: none is 0).
            namespace = request.adapter + 1
            if not self.blocks.can_allocate(tokens, reserve=len(self.running), namespace=namespace):
                break
            self.waiting.pop(0)
            hit = self.blocks.allocate(request.request_id, tokens, namespace)
            request.n_computed = hit
            if not request.admitted_once:
                request.cached_tokens, request.admitted_once = hit, True
            bisect.insort(self.running, request, key=lambda r: r.arrival)
            budget -= out.add(Work(request, hit, hit + min(len(tokens) - hit, budget)))
        return out

    def _make_room(self, request: Request, n_tokens: int, out: Schedule) -> bool:
        """Grow `request` to n_tokens, preempting newer requests as needed (and taking back
        any work already scheduled for them); False if the request itself was preempted."""
        while not self.blocks.grow(request.request_id, n_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            out.drop(victim)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.blocks.free(request.request_id)
        request.n_computed = 0
        request.preemptions += 1
        self.preemptions += 1
        self.add(request)
