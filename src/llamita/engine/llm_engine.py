"""LLMEngine: many requests at once over one model, one step at a time (continuous batching).

    engine = LLMEngine(load_model(path))
    engine.add_request("a", prompt_ids, SamplingParams(temperature=0))
    while engine.has_unfinished():
        for out in engine.step():
            print(out.request_id, out.text, out.finish_reason)

Each step the Scheduler picks the work (one token for every running request whose prompt is
computed, and prompt chunks within a token budget); decode tokens of all requests run in one
batched forward pass, prompt chunks one pass each, all over a paged KV cache whose blocks are
shared between requests with a common prefix; decode steps run through the compiled paged
step once it is built (model/compiled_paged.py, engine/step_builder.py). Each request has its
own sampling parameters, sampler (random state), detokenizer and stop rules, so a request's
output does not depend on what else is in the batch.

The engine is not thread-safe: one thread owns it (serving/engine_loop.py) and the others talk
to it through queues.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from llamita.engine.block_manager import BlockManager
from llamita.engine.loader import LoadedModel
from llamita.engine.sampler import argmax_rows, sample_rows, top_logprobs
from llamita.engine.scheduler import Request, Scheduler, Work
from llamita.engine.sequence import SequenceState
from llamita.engine.step_builder import CompileMode, StepSource, build_in_background, compile_mode, decode_label
from llamita.errors import InvalidParameterError
from llamita.model.compiled import compile_blocker
from llamita.model.compiled_paged import PagedCompiledDecoder, table_width
from llamita.model.paged_kv_cache import PagedKVCache, cache_dtype, kv_bytes_per_token
from llamita.sampling_params import SamplingParams

DEFAULT_BLOCK_SIZE = 16
DEFAULT_KV_MEMORY = 1 << 30  # bytes of KV cache when neither a size nor a token count is given
PACKAGE_ROWS = (1, 2)  # the compiled paged step's packages: one row; 2 or more rows


@dataclass
class TokenLogprob:
    """The chosen token's log-probability and the most likely alternatives (raw model
    distribution: log_softmax of the logits at temperature 1, before penalties and filters)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class RequestOutput:
    """What one request produced in one step. `text` and `token_ids` are the new part only."""

    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str | None  # None while running; "stop" or "length" at the end
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens that came from the prefix cache
    logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class EngineStats:
    """Counters since start, for metrics and for `GenerationStats` (a difference of two)."""

    prompt_tokens: int = 0  # prompt tokens run through the model (prefix-cache hits excluded)
    generation_tokens: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    steps: int = 0
    step_seconds: float = 0.0
    prefill_seconds: float = 0.0  # prompt chunks, with the sampling of each prompt's first token
    decode_seconds: float = 0.0  # decode steps, sampling included
    decode_tokens: int = 0  # tokens sampled in decode steps (a first token comes from prefill)


@dataclass
class GenerationStats:
    """Token counts and wall-clock seconds of one generation call (`LLM.last_stats`), for
    tokens/s reports."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_tokens: int = 0  # tokens sampled in decode steps (the first token comes from prefill)
    cached_tokens: int = 0  # prompt tokens found in the prefix cache, so not computed

    @property
    def prefill_tokens_per_second(self) -> float:
        """Prompt tokens computed (prefix-cache hits excluded) per second of prefill."""
        computed = self.prompt_tokens - self.cached_tokens
        return computed / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


class LLMEngine:
    def __init__(
        self,
        loaded: LoadedModel,
        *,
        kv_cache_tokens: int | None = None,
        kv_memory_bytes: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_running: int = 16,
        max_prefill_tokens: int = 512,
        prefix_caching: bool = True,
        compile: bool | None = None,
        compile_rows: Sequence[int] = PACKAGE_ROWS,
    ) -> None:
        """kv_cache_tokens (or kv_memory_bytes) sizes the shared KV cache: the total number of
        token positions all running requests can hold together. Default: 1 GiB of cache, at
        most the context length times `max_running`.
        compile: decode steps through the compiled paged step (model/compiled_paged.py), as
        engine/step_builder.py's modes say: None (default, $LLAMITA_COMPILE): once a background
        builder has made its packages (one row; 2 or more rows), picked up by the first step
        after; True: built now; False: eager. compile_rows: the packages this engine builds
        (1: one row; 2: 2-64 rows), now or in the builder; another one is used when it is on
        disk (with True: built by the first step that needs it). Eager with LoRA adapters or on CUDA (`compile_skipped` says
        why); `decode_path` says which path runs."""
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.config = loaded.config
        self.device = self.model.device
        self.prefix_caching = prefix_caching
        # The model's own config sizes its cache: under tensor parallelism, this rank's KV heads.
        # float16 for a float32 model on the CPU (paged_kv_cache.cache_dtype), else the model's.
        self.cache_dtype = cache_dtype(self.model.dtype, self.device)
        per_token = kv_bytes_per_token(self.model.config, self.cache_dtype)
        if kv_cache_tokens is None:
            budget = DEFAULT_KV_MEMORY if kv_memory_bytes is None else kv_memory_bytes
            kv_cache_tokens = budget // per_token
            if kv_memory_bytes is None:
                kv_cache_tokens = min(kv_cache_tokens, self.config.context_length * max_running)
        if kv_cache_tokens // block_size < 2:
            raise InvalidParameterError(
                "kv_cache",
                f"{kv_cache_tokens} tokens of KV cache is too small "
                f"(at least {2 * block_size} needed; one token takes {per_token} bytes)",
            )
        self.scheduler = Scheduler(BlockManager(2, block_size, prefix_caching), max_running, max_prefill_tokens)
        self._make_cache(kv_cache_tokens // block_size, block_size)
        # The ids both the model and the tokenizer know (a padded embedding has more rows).
        self.vocab_size = min(self.config.vocab_size, self.tokenizer.vocab_size)
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()
        self._arrivals = 0
        # Called with (request_id, position_logits (V,)) for each sampled token, for tests and
        # glass-box views; None costs nothing.
        self.on_logits: Callable[[str, torch.Tensor], None] | None = None
        # generate()'s outputs stepped while another generate() was being read: request -> outputs.
        self._held: dict[str, list[RequestOutput]] = {}
        self._attach_compiled(loaded, block_size, compile_mode(compile), compile_rows)

    def _make_cache(self, n_blocks: int, block_size: int) -> None:
        self.cache = PagedKVCache(self.model.config, n_blocks, block_size, dtype=self.cache_dtype, device=self.device)
        self.blocks = self.scheduler.blocks = BlockManager(n_blocks, block_size, self.prefix_caching)
        # A request never holds more positions than the model's window or the whole cache.
        self.context_length = min(self.config.context_length, n_blocks * block_size)

    @property
    def kv_cache_tokens(self) -> int:
        """Token positions the KV cache holds, all requests together."""
        return self.blocks.n_blocks * self.blocks.block_size

    def reserve(self, n_tokens: int) -> None:
        """Make the KV cache hold at least `n_tokens` positions: a new, larger cache (its
        prefix cache starts empty) if it holds fewer. Only while no request is in the engine;
        otherwise the cache stays as it is (requests wait for blocks as usual)."""
        blocks = self.blocks.blocks_for(n_tokens)
        if blocks > self.blocks.n_blocks and not self.requests:
            del self.cache  # the old pools go before the new ones are allocated
            self._make_cache(blocks, self.blocks.block_size)

    def _attach_compiled(self, loaded: LoadedModel, block_size: int, mode: CompileMode, rows: Sequence[int]) -> None:
        self.compiled: PagedCompiledDecoder | None = None
        self.compile_rows = tuple(rows)
        self.compile_skipped = None if mode == "off" else compile_blocker(self.model)
        # The background process this engine started to build its compiled step, if any.
        self.builder: subprocess.Popen[bytes] | None = None
        if mode == "off" or self.compile_skipped is not None:
            return
        source = StepSource.of(loaded, block_size)
        compiled = self.compiled = source.paged_decoder(self.model, build=mode == "foreground")
        if mode == "foreground":
            for batch in rows:
                compiled.prepare(batch)
        else:
            self.builder = build_in_background(compiled, source, rows)[1]

    @property
    def decode_path(self) -> str:
        """How decode steps run, for a status line: "compiled step" once both packages (one
        row, more rows) are loaded, else "eager" with why."""
        return decode_label(self.compiled, self.compile_skipped, self.compile_rows)

    # -- requests --------------------------------------------------------------------------
    def add_request(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None
    ) -> None:
        """Queue a request, run with the model's LoRA adapter named `adapter` (None: the base
        model). Raises InvalidParameterError / ContextOverflowError (nothing is queued then)."""
        if request_id in self.requests:
            raise InvalidParameterError("request_id", f"{request_id!r} is already running")
        if adapter is not None and adapter not in self.model.lora.names:
            raise InvalidParameterError(
                "lora",
                f"no LoRA adapter named {adapter!r} is loaded (loaded: {', '.join(self.model.lora.names) or 'none'})",
            )
        seq = SequenceState.create(0, prompt_ids, params, self.tokenizer, self.vocab_size, self.context_length)
        request = Request(
            request_id, self._arrivals, seq, adapter=-1 if adapter is None else self.model.lora.slot(adapter)
        )
        self._arrivals += 1
        self.requests[request_id] = request
        self.scheduler.add(request)

    def generate(
        self,
        prompts: Sequence[list[int]],
        params: Sequence[SamplingParams],
        adapter: str | None = None,
        stats: GenerationStats | None = None,
    ) -> Iterator[tuple[int, RequestOutput]]:
        """Run token-id prompts to the end, together (continuous batching), yielding (prompt
        index, output) as each step makes them: the Python API's loop (api/llm.py). Every
        request runs with the LoRA adapter named `adapter` (None: the base model). An idle
        engine first grows its KV cache to hold every prompt with its max_tokens (or the whole
        window). Outputs of other requests stepped meanwhile (another generate still being
        read) are kept for their own reader. Closing the iterator early aborts the requests it
        has not finished; `stats` (if given) gets the call's counts and times when it ends."""
        if len(prompts) != len(params):
            raise ValueError("one SamplingParams per prompt is required")
        if not self.requests:
            window = self.config.context_length
            need = [min(window, len(p) + (sp.max_tokens or window)) for p, sp in zip(prompts, params)]
            bs = self.blocks.block_size
            self.reserve(bs * (sum(self.blocks.blocks_for(n) + 1 for n in need) + 1))
        before = replace(self.stats)
        ids: dict[str, int] = {}
        cached = 0
        try:
            for i, (prompt, sp) in enumerate(zip(prompts, params)):
                rid = f"generate-{self._arrivals}"
                self.add_request(rid, prompt, sp, adapter)
                ids[rid] = i
                self._held[rid] = []
            live = set(ids)
            while live:
                for out in self._outputs_for(live):
                    if out.finished:
                        live.discard(out.request_id)
                        cached += out.cached_tokens
                    yield ids[out.request_id], out
        finally:
            for rid in ids:
                self._held.pop(rid, None)
                self.abort(rid)
            if stats is not None:
                after = self.stats
                stats.prompt_tokens = sum(len(p) for p in prompts)
                stats.cached_tokens = cached
                stats.generated_tokens = after.generation_tokens - before.generation_tokens
                stats.prefill_seconds = after.prefill_seconds - before.prefill_seconds
                stats.decode_seconds = after.decode_seconds - before.decode_seconds
                stats.decode_tokens = after.decode_tokens - before.decode_tokens

    def _outputs_for(self, wanted: set[str]) -> list[RequestOutput]:
        """The held outputs of the requests `wanted`, else those of the next step (which go to
        `_held` for their own readers when another generate() added them)."""
        mine = [out for rid in wanted for out in self._held.get(rid, [])]
        for rid in wanted:
            self._held[rid] = []
        if mine:
            return mine
        for out in self.step():
            if out.request_id in wanted:
                mine.append(out)
            elif out.request_id in self._held:
                self._held[out.request_id].append(out)
        return mine

    def abort(self, request_id: str) -> bool:
        """Drop a request (a client went away) and free its KV blocks now. False if unknown."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return False
        self.scheduler.remove(request)
        self.stats.requests_aborted += 1
        return True

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    @property
    def max_running(self) -> int:
        return self.scheduler.max_running

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # -- one step --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one batch; return an output for every request that produced a token or ended."""
        t0 = time.perf_counter()
        schedule = self.scheduler.schedule()
        outputs: list[RequestOutput] = []
        stats = self.stats
        with torch.inference_mode():
            if schedule.decode:
                logits = self._decode(schedule.decode)  # (B, V)
                picks = self._batched_picks(schedule.decode, logits)
                for work, row, pick in zip(schedule.decode, logits, picks):
                    outputs += self._finish_work(work, row, pick)
                stats.decode_tokens += len(schedule.decode)
                t1 = time.perf_counter()
                stats.decode_seconds += t1 - t0
            else:
                t1 = t0  # the scheduling counts as prefill time then
            for work in schedule.prefill:
                stats.prompt_tokens += work.end - work.start
                logits = self._forward([work])
                outputs += self._finish_work(work, logits[0])
        t2 = time.perf_counter()
        stats.prefill_seconds += t2 - t1
        stats.steps += 1
        stats.step_seconds += t2 - t0
        return outputs

    def _decode(self, works: list[Work]) -> torch.Tensor:
        """One token for each work: through the compiled step if its package is loaded (or
        has just been built), else `_forward`."""
        if self.compiled is None or not self.compiled.ready(len(works)):
            return self._forward(works)
        # The step's inputs made straight from Python lists, the block tables already padded
        # to the width the step attends (table_width): one small tensor each, no copies.
        tokens, positions, tables = [], [], []
        for w in works:
            tokens.append([w.request.tokens[w.start]])
            positions.append([w.start])
            tables.append(self.blocks.table(w.request.request_id))
        width = max(2, table_width(max(w.start for w in works), self.blocks.block_size))
        padded = [t + [0] * (width - len(t)) if len(t) < width else t[:width] for t in tables]
        return self.compiled(
            torch.tensor(tokens, device=self.device),
            torch.tensor(positions, device=self.device),
            torch.tensor(padded, device=self.device),
            self.cache,
        )

    def _forward(self, works: list[Work]) -> torch.Tensor:
        """Feed each work's tokens (all the same count) and return the last position's logits
        of each: (len(works), vocab). Block tables are padded with block 0 (never read
        unmasked)."""
        tokens = torch.tensor([w.request.tokens[w.start : w.end] for w in works], device=self.device)
        positions = torch.tensor([list(range(w.start, w.end)) for w in works], device=self.device)
        tables = [self.blocks.table(w.request.request_id) for w in works]
        width = max(len(t) for t in tables)
        self.cache.bind(torch.tensor([t + [0] * (width - len(t)) for t in tables], device=self.device))
        adapters = (
            torch.tensor([w.request.adapter for w in works], device=self.device) if self.model.lora.names else None
        )
        logits: torch.Tensor = self.model(tokens, positions, self.cache, None, last_only=True, adapters=adapters)
        return logits[:, -1]

    def _batched_picks(self, works: list[Work], logits: torch.Tensor) -> list[int | None]:
        """Each row's token where the batch can pick it in one call: one argmax over the rows
        that sample greedily and one `sample_rows` over those whose sampler chain is llamita's
        operator (no grammar, bias or penalty on either); None for the others, which
        `_finish_work` samples one at a time."""
        picks: list[int | None] = [None] * len(works)
        greedy: list[int] = []
        drawn: list[int] = []
        for i, w in enumerate(works):
            sampler = w.request.seq.sampler
            if w.request.seq.constraint is not None:
                continue
            if sampler.plain_greedy:
                greedy.append(i)
            elif sampler.native_chain:
                drawn.append(i)
        vocab = logits[:, : self.vocab_size]
        if greedy:
            rows = vocab if len(greedy) == len(works) else vocab[greedy]
            for i, token in zip(greedy, argmax_rows(rows)):
                picks[i] = token
        if drawn:
            rows = vocab if len(drawn) == len(works) else vocab[drawn]
            samplers = [works[i].request.seq.sampler for i in drawn]
            for i, token in zip(drawn, sample_rows(rows.cpu(), samplers)):
                picks[i] = token
        return picks

    def _finish_work(self, work: Work, logits: torch.Tensor, pick: int | None = None) -> list[RequestOutput]:
        request = work.request
        request.n_computed = work.end
        self.blocks.register(request.request_id, request.tokens, work.end)
        if not work.completes:
            return []
        seq = request.seq
        logits = logits[: self.vocab_size].float().cpu()
        if self.on_logits is not None:
            self.on_logits(request.request_id, logits)
        token = seq.next_token(logits) if pick is None else pick
        step = seq.advance(token)
        logprobs = []
        # A stop token is not part of the output: no token, no log-probability for it.
        if seq.params.logprobs is not None and step.token_id is not None:
            lp = torch.log_softmax(logits, dim=-1)
            logprobs.append(
                TokenLogprob(token, finite_logprob(float(lp[token])), top_logprobs(logits, seq.params.logprobs))
            )
        if step.token_id is not None:
            self.stats.generation_tokens += 1
        if step.finish_reason is not None:
            self.scheduler.remove(request)
            self.requests.pop(request.request_id, None)
            self.stats.requests_finished += 1
        return [
            RequestOutput(
                request.request_id,
                [] if step.token_id is None else [token],
                step.text,
                step.finish_reason,
                len(seq.prompt_ids),
                len(seq.generated),
                request.cached_tokens,
                logprobs,
            )
        ]


def finite_logprob(x: float) -> float:
    """-inf log-probabilities (a token with zero probability) become the most negative float,
    so they survive JSON."""
    return x if math.isfinite(x) else -3.4e38
