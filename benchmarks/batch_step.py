"""Where one batched decode step's time goes (issue 23: 8 sequences >= 4x one): the compiled
paged step alone at 1 and B rows, its parts under torch.profiler (the kernels it calls through
the dispatcher; the fused C++ loops are the rest), and the engine's Python around it (what
`llamita bench -n N -b B` times besides the step). Prints JSON.

    LLAMITA_COMPILED_DIR=/tmp/aoti-mine python benchmarks/batch_step.py --threads 2 [--rows 1 8]
        [--position 64] [--steps 50] [--no-profile] [--no-engine] [--model PATH]

Both paged packages (one row; 2-64 rows) are built first if missing (minutes, untimed).
CPU time of the process is reported next to wall time: other jobs on the machine inflate wall
time, not the CPU time the step itself takes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict

import torch

from llamita.engine.llm_engine import LLMEngine
from llamita.engine.loader import load_model
from llamita.engine.threads import use_threads
from llamita.jobs.bench import _random_ids
from llamita.model.compiled_paged import PagedCompiledDecoder, table_width
from llamita.model.paged_kv_cache import PagedKVCache
from llamita.sampling_params import SamplingParams


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def step_inputs(cfg, batch: int, position: int, block_size: int) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
    """Tokens, positions and block tables of `batch` rows at `position`, each row its own
    blocks of one pool."""
    per_row = table_width(position, block_size)
    tokens = torch.randint(0, cfg.vocab_size, (batch, 1), generator=torch.Generator().manual_seed(0))
    positions = torch.full((batch, 1), position)
    tables = torch.arange(batch * per_row).view(batch, per_row)
    return tokens, positions, tables


def time_step(decoder: PagedCompiledDecoder, cache: PagedKVCache, inputs, steps: int) -> dict[str, float]:  # noqa: ANN001
    walls, cpus = [], []
    with torch.inference_mode():
        decoder(*inputs, cache)  # warm-up
        for _ in range(steps):
            w0, c0 = _clock()
            decoder(*inputs, cache)
            w1, c1 = _clock()
            walls.append(w1 - w0)
            cpus.append(c1 - c0)
    return {"wall_ms": statistics.median(walls) * 1e3, "cpu_ms": statistics.median(cpus) * 1e3}


def profile_step(decoder: PagedCompiledDecoder, cache: PagedKVCache, inputs, steps: int) -> dict[str, object]:  # noqa: ANN001
    """Self CPU time per operator the step calls through the dispatcher, ms a step."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        decoder(*inputs, cache)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            w0 = time.perf_counter()
            for _ in range(steps):
                decoder(*inputs, cache)
            wall = (time.perf_counter() - w0) / steps
    ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in prof.key_averages():
        ops[e.key][0] += e.self_cpu_time_total / 1e3 / steps
        ops[e.key][1] += e.count / steps
    top = sorted(ops.items(), key=lambda kv: -kv[1][0])[:25]
    return {"wall_ms_profiled": wall * 1e3, "ops": {k: {"ms": round(v[0], 3), "calls": v[1]} for k, v in top}}


def engine_overhead(loaded, batch: int, n_gen: int, runs: int) -> dict[str, float]:  # noqa: ANN001
    """tg n_gen x batch through LLMEngine.generate as `bench` runs it, and the part of it
    spent inside the compiled step."""
    engine = LLMEngine(
        loaded, kv_cache_tokens=max(batch * (n_gen + 32), 64), max_running=batch, compile=True, compile_rows=(1, 2)
    )
    compiled = engine.compiled
    assert compiled is not None
    inside = [0.0]
    run = compiled._run

    def timed(batch: int, inputs: list[torch.Tensor]) -> torch.Tensor:
        t0 = time.perf_counter()
        out = run(batch, inputs)
        inside[0] += time.perf_counter() - t0
        return out

    compiled._run = timed  # type: ignore[method-assign]  # the package's own time
    if batch == 1:
        prompts = [[loaded.tokenizer.bos_id or 1]]
    else:
        prompts = [[t] for t in _random_ids(loaded, batch, seed=1)]
    params = SamplingParams(temperature=0, max_tokens=n_gen, ignore_eos=True)
    totals, steps_in, walls = [], [], []
    for rep in range(runs + 1):
        inside[0] = 0.0
        t0 = time.perf_counter()
        for _ in engine.generate(prompts, [params] * batch):
            pass
        wall = time.perf_counter() - t0
        if rep:  # the first is a warm-up
            walls.append(wall)
            steps_in.append(inside[0])
            totals.append(n_gen * batch / wall)
    return {
        "tokens_per_second": statistics.median(totals),
        "run_ms": statistics.median(walls) * 1e3,
        "inside_step_ms": statistics.median(steps_in) * 1e3,
        "outside_step_ms_per_step": (statistics.median(walls) - statistics.median(steps_in)) * 1e3 / n_gen,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model path or name (default: the default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8], help="batch sizes measured")
    parser.add_argument("--position", type=int, default=64, help="cache position of every row's token")
    parser.add_argument("--steps", type=int, default=50, help="steps timed per figure")
    parser.add_argument("--runs", type=int, default=3, help="engine runs (tg 128) per batch size")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-engine", action="store_true")
    args = parser.parse_args()
    use_threads(args.threads)
    loaded = load_model(args.model)
    model = loaded.model
    block_size = 16
    decoder = PagedCompiledDecoder(model, block_size)
    out: dict[str, object] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for batch in args.rows:
        decoder.prepare(batch)
        inputs = step_inputs(model.config, batch, args.position, block_size)
        cache = PagedKVCache(model.config, int(inputs[2].numel()) + 1, block_size, dtype=decoder.cache_dtype)
        figures: dict[str, object] = time_step(decoder, cache, inputs, args.steps)
        if not args.no_profile:
            figures["profile"] = profile_step(decoder, cache, inputs, max(5, args.steps // 5))
        if not args.no_engine:
            figures["engine_tg128"] = engine_overhead(loaded, batch, 128, args.runs)
        out[f"rows_{batch}"] = figures
    out["load_average_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
