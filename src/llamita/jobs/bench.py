"""Speed of a loaded model, measured as llama-bench measures it, so the numbers compare.

* pp N (prompt processing): N prompt tokens evaluated from an empty context, in the prefill
  chunks generation uses; tokens/s = N / seconds.
* tg N (text generation): N tokens generated one at a time from an empty context (a single
  BOS-or-first token fed first, as llama-bench does), greedy; tokens/s = N / seconds.
* tg N x B (batched generation, llamita only): B sequences of N tokens each, stepped together;
  tokens/s counts the tokens of all sequences.

All run on the continuous-batching engine (engine/llm_engine.py) that `LLM` and the server use.

Prompt tokens are random ids (fixed seed) like llama-bench's; every test is run `repetitions`
times after one warm-up run, and the median and the standard deviation are reported.

Bandwidth floor (`bandwidth_floor`): batch-1 generation must read every weight once per token,
so it cannot beat weight bytes read per token / memory bandwidth. The bandwidth is measured in
the same run by copying a buffer far larger than the last-level cache (STREAM's Copy: bytes read
plus bytes written, per second).
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from llamita.engine.llm_engine import GenerationStats, LLMEngine
from llamita.engine.loader import LoadedModel
from llamita.model.compiled import compile_blocker
from llamita.model.transformer import Transformer
from llamita.sampling_params import SamplingParams


@dataclass
class BenchResult:
    test: str  # "pp512", "tg128", "tg128x8"
    n_tokens: int  # tokens per repetition (all sequences together)
    tokens_per_second: float  # median over repetitions
    stddev: float
    samples: list[float] = field(default_factory=list)  # tokens/s of each repetition
    warmup_seconds: float = 0.0  # the untimed first run (with --compile: includes compiling)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def weight_bytes_per_token(model: Transformer) -> int:
    """Bytes of weights one batch-1 decode step reads, in the form the model holds them (packed
    int4 codes and scales, int8 rows, dense tensors): every weight tensor once, except the
    embedding table, of which a step reads one row, unless the output projection multiplies
    by it (tied embeddings)."""
    embed, head = model.embed_tokens, model.lm_head
    table = {t.data_ptr() for t in [*embed.parameters(), *embed.buffers()]}
    read_by_head = table if head is None else {t.data_ptr() for t in [*head.parameters(), *head.buffers()]}
    sizes: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        ptr = t.data_ptr()
        if ptr in table and ptr not in read_by_head:
            continue
        sizes[ptr] = max(sizes.get(ptr, 0), t.nbytes)  # views sharing a start count once
    return sum(sizes.values())


def copy_bandwidth(nbytes: int = 1 << 30, repetitions: int = 5) -> float:
    """Memory bandwidth in bytes/s (read + written) of copying a `nbytes` buffer, median of
    `repetitions`, with torch's current threads. 1 GiB by default: several times any
    last-level cache, so the copy runs from memory."""
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)  # page the destination in
    times = []
    for _ in range(repetitions):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times)


@dataclass
class BandwidthFloor:
    weight_bytes_per_token: int
    copy_bandwidth: float  # bytes/s, read + written
    floor_tokens_per_second: float  # copy_bandwidth / weight_bytes_per_token
    fraction_of_floor: float  # measured batch-1 tg tokens/s / floor_tokens_per_second

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def bandwidth_floor(loaded: LoadedModel, tg_tokens_per_second: float) -> BandwidthFloor:
    weights = weight_bytes_per_token(loaded.model)
    bandwidth = copy_bandwidth()
    floor = bandwidth / weights
    return BandwidthFloor(weights, bandwidth, floor, tg_tokens_per_second / floor)


def _random_ids(loaded: LoadedModel, n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    vocab_size = min(loaded.config.vocab_size, loaded.tokenizer.vocab_size)
    return torch.randint(0, vocab_size, (n,), generator=g).tolist()


def _timed(run: Callable[[], float], n_tokens: int, repetitions: int, test: str) -> BenchResult:
    t0 = time.perf_counter()
    run()  # warm-up: first-call allocations, kernel selection, page faults on the weights
    warmup = time.perf_counter() - t0
    samples = [n_tokens / run() for _ in range(repetitions)]
    stddev = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return BenchResult(test, n_tokens, statistics.median(samples), stddev, samples, warmup)


def _run_engine(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> GenerationStats:
    stats = GenerationStats()
    for _ in engine.generate(prompts, [params] * len(prompts), stats=stats):
        pass
    return stats


def bench_prompt(loaded: LoadedModel, n_prompt: int, repetitions: int = 5) -> BenchResult:
    """pp: the engine's prefill (chunks of its max_prefill_tokens), the prefix cache off so
    every repetition computes the whole prompt."""
    engine = LLMEngine(loaded, kv_cache_tokens=n_prompt + 64, max_running=1, prefix_caching=False, compile=False)
    ids = _random_ids(loaded, n_prompt)
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    return _timed(lambda: _run_engine(engine, [ids], params).prefill_seconds, n_prompt, repetitions, f"pp{n_prompt}")


def decode_path(loaded: LoadedModel, compile: bool) -> str:
    """What `bench_generation(loaded, compile=compile)` decodes through: "compiled step",
    "eager" or "eager (why the step cannot be compiled)"."""
    blocker = compile_blocker(loaded.model) if compile else None
    return "eager" if not compile else f"eager ({blocker})" if blocker else "compiled step"


def bench_generation(
    loaded: LoadedModel, n_gen: int, repetitions: int = 5, compile: bool = False, batch: int = 1
) -> BenchResult:
    """tg N (batch 1) or tg N x B: B sequences stepped together by the engine every run of the
    Python API and the server uses (engine/llm_engine.py). compile: decode through the compiled
    paged step (model/compiled_paged.py), its package built first (the warm-up run)."""
    rows = (1,) if batch == 1 else (1, 2)
    engine = LLMEngine(
        loaded, kv_cache_tokens=max(batch * (n_gen + 32), 64), max_running=batch, compile=compile, compile_rows=rows
    )
    if batch == 1:
        bos = loaded.tokenizer.bos_id
        prompts = [[bos if bos is not None else _random_ids(loaded, 1)[0]]]
    else:  # different first tokens, so the prefix cache cannot merge the sequences
        prompts = [[t] for t in _random_ids(loaded, batch, seed=1)]
    params = SamplingParams(temperature=0, max_tokens=n_gen, ignore_eos=True)

    def run() -> float:
        t0 = time.perf_counter()
        _run_engine(engine, prompts, params)
        return time.perf_counter() - t0

    return _timed(run, n_gen * batch, repetitions, f"tg{n_gen}" if batch == 1 else f"tg{n_gen}x{batch}")


def bench_batched_generation(
    loaded: LoadedModel, n_gen: int, batch: int, repetitions: int = 5, compile: bool = False
) -> BenchResult:
    """tg N x B (see bench_generation)."""
    return bench_generation(loaded, n_gen, repetitions, compile, batch)
