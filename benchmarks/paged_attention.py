"""llamita's paged decode attention (kernels/csrc/attention.cpp) at every SIMD level this CPU has:
the CPU time of one call (1 thread) for B rows each attending L positions, float32 and bfloat16
pools, the default model's heads (9 query heads over 3 KV heads, head_dim 64; `--heads 32 8`
for Llama 3 8B's). CPU time of the calling thread, so a shared machine still gives comparable
figures.

    python benchmarks/paged_attention.py [--rows 8] [--positions 64 512 2048] [--reps 50]
        [--heads 9 3] [--head-dim 64] [--levels avx2]

Prints JSON: per level, dtype and positions, the minimum and median milliseconds per call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from llamita.kernels import native


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8, help="batch rows, one query each (default 8)")
    parser.add_argument("--positions", type=int, nargs="+", default=[64, 512, 2048], help="positions a row attends")
    parser.add_argument("--reps", type=int, default=50, help="calls timed per case (default 50)")
    parser.add_argument("--heads", type=int, nargs=2, default=[9, 3], help="query heads, KV heads (default 9 3)")
    parser.add_argument("--head-dim", type=int, default=64, help="head_dim (default 64)")
    parser.add_argument("--block-size", type=int, default=16, help="positions per cache block (default 16)")
    parser.add_argument("--levels", nargs="+", default=None, help="kernel levels (default: every one that loads)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.levels or [lv.name for lv in native.KERNEL_LEVELS]
    levels = [name for name in names if native.level_ops(name) is not None]
    n_heads, n_kv = args.heads
    bs, hd, rows = args.block_size, args.head_dim, args.rows
    gen = torch.Generator().manual_seed(0)
    results = []
    for length in args.positions:
        width = -(-length // bs)
        n_blocks = rows * width + 1
        tables = torch.randperm(n_blocks, generator=gen)[: rows * width].view(rows, width)  # scattered
        positions = torch.full((rows,), length - 1)
        q = torch.randn(rows, n_heads, hd, generator=gen)
        pools = torch.randn(2, n_blocks, bs, n_kv, hd, generator=gen)
        for dtype in (torch.float32, torch.bfloat16):
            k_pool, v_pool = pools[0].to(dtype), pools[1].to(dtype)
            for level in levels:
                op = native.level_ops(level).paged_decode_attention  # type: ignore[union-attr]
                op(q, k_pool, v_pool, tables, positions, hd**-0.5)  # warm-up
                times = []
                for _ in range(args.reps):
                    t0 = time.thread_time()
                    op(q, k_pool, v_pool, tables, positions, hd**-0.5)
                    times.append((time.thread_time() - t0) * 1e3)
                results.append(
                    {
                        "level": level,
                        "dtype": str(dtype).removeprefix("torch."),
                        "positions": length,
                        "min_ms": round(min(times), 4),
                        "median_ms": round(statistics.median(times), 4),
                    }
                )
    report = {
        "torch": torch.__version__,
        "rows": rows,
        "heads": [n_heads, n_kv],
        "head_dim": hd,
        "threads": 1,
        "clock": "thread CPU time",
        "load_average_at_end": os.getloadavg(),
        "results": results,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
