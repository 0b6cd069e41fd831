"""The sampler chain per token: llamita's operator (kernels/csrc/sampling.cpp, at every SIMD level
this CPU has) against the torch chain it replaces, on rows of the default model's vocabulary
(49,152 logits, normal with standard deviation 3), at the default parameters (top_k 40, top_p
0.95, min_p 0.05, temperature 0.8) or those given.

    python benchmarks/sampling.py [--rows 1 8] [--vocab 49152] [--top-k 40] [--reps 300]
        [--threads 2]

Wall microseconds a call, the median of 5 runs of `--reps` calls: `Sampler.sample` on one row
through each path, and `sample_rows` (one operator call for every row, as the engine's batched
decode step makes it) against one torch-chain `sample` a row. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch

from llamita.engine import sampler as sampler_module
from llamita.engine.sampler import Sampler, sample_rows
from llamita.kernels import native
from llamita.sampling_params import SamplingParams


def _median_us(call: Callable[[], object], reps: int) -> float:
    for _ in range(20):
        call()
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            call()
        runs.append((time.perf_counter() - t0) / reps * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8], help="rows a step samples (default 1 8)")
    parser.add_argument("--vocab", type=int, default=49152, help="logits a row (default 49152)")
    parser.add_argument("--top-k", type=int, default=40, help="top_k (default 40)")
    parser.add_argument("--reps", type=int, default=300, help="calls a run (default 300)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = SamplingParams(temperature=0.8, top_k=args.top_k)
    logits = torch.randn(max(args.rows), args.vocab, generator=torch.Generator().manual_seed(0)) * 3
    native_ops = sampler_module.native_sampling_ops
    results = []
    for rows in args.rows:
        samplers = [Sampler(params) for _ in range(rows)]
        x = logits[:rows]
        if native_ops() is not None:
            operator = _median_us(lambda: sample_rows(x, samplers), args.reps)  # noqa: B023
        else:
            operator = None
        sampler_module.native_sampling_ops = lambda: None  # type: ignore[assignment]
        try:
            torch_chain = _median_us(lambda: [s.sample(x[i], []) for i, s in enumerate(samplers)], args.reps)  # noqa: B023
        finally:
            sampler_module.native_sampling_ops = native_ops  # type: ignore[assignment]
        results.append(
            {
                "rows": rows,
                "operator_us": operator,
                "torch_chain_us": torch_chain,
                "speedup": torch_chain / operator if operator else None,
            }
        )
    report = {
        "kernel_level": native.kernel_level(),
        "isa": os.environ.get("LLAMITA_ISA", "native"),
        "threads": args.threads,
        "vocab": args.vocab,
        "params": {"top_k": params.top_k, "top_p": params.top_p, "min_p": params.min_p, "temperature": 0.8},
        "results": results,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
