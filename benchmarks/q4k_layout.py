"""Q4_K in llamita's two VNNI layouts: "vnni" (bfloat16 scale and zero per 32 weights, 5 bits a
weight) against "vnni_k" (Q4_K's own scales, 4.625 bits), on Llama 3 8B shapes.

Decode reads each weight once per token from memory, so a kernel timed on one weight that fits
the CPU's cache would flatter both. Here each shape is packed `--copies` times (default: enough
for ~512 MB per layout) and every call takes the next copy, as a model's layers do. Both layouts
run interleaved, call by call, so the machine's noise falls on both alike. Prints JSON: per
shape and rows M, the median microseconds per call of each, their ratio (vnni / vnni_k: above 1
means vnni_k is faster) and the GB/s each reads.

    python benchmarks/q4k_layout.py [--threads 2] [--rounds 30] [--m 1 2 4 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from llamita.kernels import native
from llamita.kernels.int4 import int4_linear
from llamita.weights.q4_pack import pack_q4
from llamita.weights.quants import GGMLType, quantize

# (out_features, in_features): 8B's fused q/k/v, o, fused gate/up, down.
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30, help="timed passes over all copies (default 30)")
    ap.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8], help="rows of x (default 1 2 4 8)")
    ap.add_argument("--megabytes", type=int, default=512, help="packed bytes per layout and shape (default 512)")
    args = ap.parse_args()
    if not native.vnni_kernels():
        raise SystemExit(f"llamita's VNNI kernels are unavailable: {native.vnni_kernels_skipped()}")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    results = []
    for shape in SHAPES:
        raw = quantize(torch.randn(shape, generator=gen) * 0.05, GGMLType.Q4_K)
        one = pack_q4(raw, GGMLType.Q4_K, shape, "vnni_k")
        copies = max(2, args.megabytes * 2**20 // one.nbytes)
        layouts = {
            name: [pack_q4(raw, GGMLType.Q4_K, shape, name) for _ in range(copies)] for name in ("vnni", "vnni_k")
        }
        for m in args.m:
            x = torch.randn(m, shape[1], generator=gen).to(torch.bfloat16)
            times: dict[str, list[float]] = {name: [] for name in layouts}
            for r in range(args.rounds + 2):  # the first two passes warm up
                for i in range(copies):
                    for name, ws in layouts.items():
                        t0 = time.perf_counter()
                        int4_linear(x, ws[i])
                        if r >= 2:
                            times[name].append(time.perf_counter() - t0)
            med = {name: statistics.median(t) for name, t in times.items()}
            results.append(
                {
                    "shape": list(shape),
                    "m": m,
                    "copies": copies,
                    "us": {name: round(t * 1e6, 1) for name, t in med.items()},
                    "gb_per_s": {name: round(layouts[name][0].nbytes / t / 1e9, 1) for name, t in med.items()},
                    "bytes": {name: layouts[name][0].nbytes for name in layouts},
                    "ratio_vnni_over_vnni_k": round(med["vnni"] / med["vnni_k"], 3),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    ratios = {m: statistics.median(r["ratio_vnni_over_vnni_k"] for r in results if r["m"] == m) for m in args.m}
    print(json.dumps({"threads": args.threads, "median_ratio_by_m": ratios}))


if __name__ == "__main__":
    main()
