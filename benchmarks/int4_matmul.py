"""Packed int4 and int8 matmuls against dense bfloat16 on CPU, per weight shape and rows M.

Prints JSON: median microseconds per call of
  dense_bf16       F.linear(x, W) with W already dense bfloat16 (what load-time dequant gives)
  int4             int4_linear(x, pack_q4(...)) in the default layout (llamita's VNNI kernel
                   where it loads, else torch's)
  int4_torch       the same weight in torch's layout (torch's kernel), when both exist
  int8             int8_linear(x, quantize_int8(...)) of the same weight, per-row int8 in the
                   default layout (llamita's VNNI kernel where it loads, else torch's)
  int8_torch       the same int8 weight in torch's layout, when both exist
  dequant_dense    dequantize_int4(w, bfloat16) then F.linear: dense compute, int4 storage
  gguf_dense       quants.dequantize(raw, bfloat16) then F.linear: the same from GGUF bytes
and, per shape, the smallest M at which dense_bf16 and dequant_dense beat int4, to pick where
prefill should leave the int4 kernel. Weights are random Q4_0 (the kernel is format-blind).

    python benchmarks/int4_matmul.py [--threads 2] [--min-time 1.0] [--m 1 8 64 512]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from llamita.kernels.int4 import _probe_layout, default_layout, dequantize_int4, int4_linear, int4_supported
from llamita.kernels.int8 import int8_linear, int8_supported, quantize_int8
from llamita.weights.q4_pack import pack_q4
from llamita.weights.quants import GGMLType, dequantize

# (in_features, out_features): SmolLM2-135M (up/gate, down, q/o, tied head), Llama 3 8B FFN.
SHAPES = [(576, 1536), (1536, 576), (576, 576), (576, 49152), (4096, 14336), (14336, 4096)]


def random_q4_0(out_features: int, in_features: int, gen: torch.Generator) -> torch.Tensor:
    """Valid random Q4_0 bytes (18-byte blocks: fp16 d, 16 bytes of nibbles), built directly
    because quantizing 60M floats would dominate the run."""
    n_blocks = out_features * in_features // 32
    blocks = torch.randint(0, 256, (n_blocks, 18), generator=gen, dtype=torch.uint8)
    d = (torch.rand(n_blocks, 1, generator=gen) * 0.01).to(torch.float16)
    blocks[:, :2] = d.view(torch.uint8)
    return blocks.reshape(-1)


def median_us(calls: dict[str, Callable[[], object]], min_time: float, min_reps: int = 5) -> dict[str, float]:
    """Median wall time of single calls of each method, in microseconds.

    Methods are timed round-robin, one call each per round, so that a burst of load on this
    shared machine hits them all alike; rounds continue for >= min_reps and >= min_time s.
    """
    for fn in calls.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_reps or (time.perf_counter() - start < min_time and rounds < 2000):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(ts) * 1e6 for name, ts in times.items()}


def bench_shape(
    in_f: int, out_f: int, ms: list[int], min_time: float, gen: torch.Generator
) -> list[dict[str, float | int]]:
    raw = random_q4_0(out_f, in_f, gen)
    w = pack_q4(raw, GGMLType.Q4_0, (out_f, in_f))
    w_torch = (
        pack_q4(raw, GGMLType.Q4_0, (out_f, in_f), "torch")
        if w.layout != "torch" and _probe_layout() is not None
        else None
    )
    dense = dequantize_int4(w, torch.bfloat16)
    w8 = quantize_int8(out_f, in_f, lambda a, b: dense[a:b].float()) if int8_supported() else None
    w8_torch = (
        quantize_int8(out_f, in_f, lambda a, b: dense[a:b].float(), layout="torch")
        if w8 is not None and w8.layout != "torch"
        else None
    )
    rows = []
    for m in ms:
        x = torch.randn(m, in_f, generator=gen).to(torch.bfloat16)
        calls: dict[str, Callable[[], object]] = {
            "dense_bf16": lambda: F.linear(x, dense),
            "int4": lambda: int4_linear(x, w),
            **({"int4_torch": lambda: int4_linear(x, w_torch)} if w_torch is not None else {}),
            **({"int8": lambda: int8_linear(x, w8)} if w8 is not None else {}),
            **({"int8_torch": lambda: int8_linear(x, w8_torch)} if w8_torch is not None else {}),
            "dequant_dense": lambda: F.linear(x, dequantize_int4(w, torch.bfloat16)),
            "gguf_dense": lambda: F.linear(x, dequantize(raw, GGMLType.Q4_0, (out_f, in_f), torch.bfloat16)),
        }
        row: dict[str, float | int] = {"in": in_f, "out": out_f, "m": m}
        for name, us in median_us(calls, min_time).items():
            row[f"{name}_us"] = round(us, 1)
        rows.append(row)
    return rows


def crossover(rows: list[dict[str, float | int]], method: str) -> int | None:
    """Smallest benchmarked M where `method` is faster than int4 (None: never)."""
    for r in rows:
        if r[f"{method}_us"] < r["int4_us"]:
            return int(r["m"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of round-robin timing per (shape, M)")
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8, 64, 512])
    args = parser.parse_args()
    if not int4_supported():
        raise SystemExit("torch's packed int4 CPU matmul is unavailable on this build/CPU")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    results, crossovers = [], []
    with torch.inference_mode():
        for in_f, out_f in SHAPES:
            rows = bench_shape(in_f, out_f, args.m, args.min_time, gen)
            results += rows
            crossovers.append(
                {
                    "in": in_f,
                    "out": out_f,
                    "dense_bf16_beats_int4_from_m": crossover(rows, "dense_bf16"),
                    "dequant_dense_beats_int4_from_m": crossover(rows, "dequant_dense"),
                }
            )
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "int4_layout": default_layout(),
                "load_average_at_end": os.getloadavg(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "threads": args.threads,
                "unit": "median microseconds per call",
                "results": results,
                "crossovers": crossovers,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
