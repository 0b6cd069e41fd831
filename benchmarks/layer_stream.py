"""The default model's four 4-bit matmuls of a layer (Q4_1: q/k/v 960 x 576, o 576 x 576,
gate/up 3072 x 576, down 576 x 1536) over 30 layers of distinct random weights, as a decode
step runs them: ~60 MB of codes stream from memory each pass, unlike benchmarks/kernel_rows.py,
whose one weight stays in cache. Wall time at T threads (the bandwidth and the overlap of memory
with arithmetic are what it measures), per kernel level and rows of x.

    python benchmarks/layer_stream.py [--rows 1 8] [--threads 2] [--reps 10] [--levels avx2]

Prints JSON: per level and rows, the minimum and median milliseconds of one pass (120 calls).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from llamita.kernels import native

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in) of one layer's matmuls
LAYERS = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8], help="rows of x (default 1 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--reps", type=int, default=10, help="timed passes (default 10)")
    parser.add_argument("--levels", nargs="+", default=None, help="kernel levels (default: every one that loads)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.levels or [lv.name for lv in native.KERNEL_LEVELS]
    levels = [name for name in names if native.level_ops(name) is not None]
    gen = torch.Generator().manual_seed(0)
    weights = []
    for _ in range(LAYERS):
        for n, k in SHAPES:
            codes = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen)
            scales = (torch.rand(n * (k // 32) * 2, generator=gen) * 1e-2).to(torch.bfloat16)
            weights.append((codes, scales, k))
    results = []
    for rows in args.rows:
        xs = {k: torch.randn(rows, k, generator=gen) for _, k in SHAPES}
        for level in levels:
            mm = native.level_ops(level).q4_vnni_mm  # type: ignore[union-attr]
            for codes, scales, k in weights:  # warm-up pass
                mm(xs[k], codes, scales)
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                for codes, scales, k in weights:
                    mm(xs[k], codes, scales)
                times.append((time.perf_counter() - t0) * 1e3)
            results.append(
                {
                    "level": level,
                    "rows": rows,
                    "min_ms": round(min(times), 3),
                    "median_ms": round(statistics.median(times), 3),
                }
            )
    report = {
        "torch": torch.__version__,
        "threads": args.threads,
        "layers": LAYERS,
        "clock": "wall time",
        "load_average_at_end": os.getloadavg(),
        "results": results,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
