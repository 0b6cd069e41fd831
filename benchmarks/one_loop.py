"""Single-stream decode before and after the one decode loop (issue 23), in one process with
the runs alternating, so both sides see the same machine load. Prints JSON.

    git archive a459e84 src | tar -x -C /tmp/old       # the last commit with engine/generator.py
    python benchmarks/one_loop.py --old-generator /tmp/old/src/llamita/engine/generator.py \\
        --threads 1 --runs 7

* step: the compiled decode step alone at one row, positions 0-127: static cache
  (model/compiled.py) against paged (model/compiled_paged.py), ms a step, medians.
* tg128: the removed `Generator` over the static compiled step against `LLMEngine.generate`
  over the paged one (greedy from BOS, ignore_eos), tokens/s, medians of --runs each.
* tg128x8 (with --batch 8): the engine's 8 sequences against its single stream.

Both compiled packages must be built (run `llamita bench` once; LLAMITA_COMPILED_DIR moves them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch

from llamita.engine.llm_engine import LLMEngine
from llamita.engine.loader import load_model
from llamita.jobs.bench import _random_ids
from llamita.model.compiled import CompiledDecoder
from llamita.model.compiled_paged import PagedCompiledDecoder, table_width
from llamita.model.kv_cache import KVCache
from llamita.model.paged_kv_cache import PagedKVCache
from llamita.sampling_params import SamplingParams


def step_times(model, runs: int) -> dict[str, float]:  # noqa: ANN001
    static = CompiledDecoder(model, build=False)
    paged = PagedCompiledDecoder(model, 16, build=False)
    if not (static.ready(1) and paged.ready(1)):
        raise SystemExit("build both one-row packages first")
    ts, tp = [], []
    with torch.inference_mode():
        for rep in range(runs):
            sc = KVCache(model.config, 1, 256, dtype=model.dtype)
            pc = PagedKVCache(model.config, 16, 16, dtype=model.dtype)
            tok = torch.tensor([[1]])
            for p in range(128):
                pos = torch.tensor([[p]])
                t0 = time.perf_counter()
                logits = static(tok, pos, sc)
                t1 = time.perf_counter()
                paged(tok, pos, torch.tensor([list(range(max(2, table_width(p, 16))))]), pc)
                t2 = time.perf_counter()
                if rep:  # the first pass warms up
                    ts.append(t1 - t0)
                    tp.append(t2 - t1)
                tok = logits.argmax(-1, keepdim=True)
    return {"static_ms": statistics.median(ts) * 1e3, "paged_ms": statistics.median(tp) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-generator", help="engine/generator.py of a commit before the change")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each side (default 7)")
    parser.add_argument("--batch", type=int, default=0, help="also tg128 x this many sequences")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None, dtype="auto", device="cpu")
    out: dict[str, object] = {"threads": args.threads, "load_average_before": os.getloadavg()}
    params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    bos = loaded.tokenizer.bos_id
    engine = LLMEngine(loaded, kv_cache_tokens=512, max_running=1, compile=True, compile_rows=(1,))

    def tg(run) -> float:  # noqa: ANN001
        t0 = time.perf_counter()
        n = run()
        return n / (time.perf_counter() - t0)

    # Each side returns the tokens it made: one output a token (ignore_eos: no closing step).
    sides = {"engine": lambda: len([o for _, o in engine.generate([[bos]], [params])])}
    if args.old_generator:
        out["step"] = step_times(loaded.model, 3)
        spec = importlib.util.spec_from_file_location("old_generator", args.old_generator)
        assert spec is not None and spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        sys.modules["old_generator"] = old
        spec.loader.exec_module(old)
        gen = old.Generator(loaded.model, loaded.tokenizer, compile=True, build=False)
        sides["generator"] = lambda: len(list(gen.stream([[bos]], [params])))
    if args.batch:
        many = LLMEngine(loaded, kv_cache_tokens=args.batch * 200, max_running=args.batch, compile=True)
        prompts = [[t] for t in _random_ids(loaded, args.batch, seed=1)]
        sides["engine_x_batch"] = lambda: len([o for _, o in many.generate(prompts, [params] * args.batch)])
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for run in sides.values():  # warm-up
        tg(run)
    for _ in range(args.runs):
        for name, run in sides.items():
            samples[name].append(tg(run))
    out["tokens_per_second"] = samples
    out["median_tokens_per_second"] = {name: statistics.median(v) for name, v in samples.items()}
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
