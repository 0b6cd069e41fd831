"""llamita's matmul kernels at every SIMD level this CPU has, per rows of x: the cost of one
call in CPU time of the calling thread (1 thread), so that a machine shared with other work
still gives comparable figures (wall time on a loaded machine swings 10x).

Kernels and shapes: the int8 kernel on the default model's tied output projection (49152 x 576,
the largest matmul of its decode step; batched decode runs it at 8 rows), and the Q6_K kernel
on the 8B's output projection (128256 x 4096) and ffn_down (4096 x 14336), against the int8
kernel on the same shapes (what Q6_K weights were re-quantized to before). Weights are random.

    python benchmarks/kernel_rows.py [--m 1 2 4 8 16] [--reps 20] [--kernels q8_head q6k_down]

Prints JSON: per kernel, level and M, the minimum and median milliseconds per call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from llamita.kernels import int8, native

# name -> (out_features, in_features)
SHAPES = {
    "q8_head": (49152, 576),
    "q6k_output": (128256, 4096),
    "q8_output": (128256, 4096),
    "q6k_down": (4096, 14336),
    "q8_down": (4096, 14336),
}


def _random_q6k(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Valid random Q6_K bytes (210-byte blocks: ql, qh, int8 sc, f16 d), built directly."""
    blocks = torch.randint(0, 256, (n * k // 256, 210), generator=gen, dtype=torch.uint8)
    blocks[:, 208:210] = (torch.rand(blocks.shape[0], 1, generator=gen) * 1e-3).to(torch.float16).view(torch.uint8)
    return blocks.reshape(-1)


def _weight(name: str, ops, gen: torch.Generator) -> tuple[str, tuple[torch.Tensor, torch.Tensor]]:
    n, k = SHAPES[name]
    if name.startswith("q8"):
        w = int8.quantize_int8(n, k, lambda a, b: torch.rand(b - a, k, generator=gen) - 0.5, layout="vnni")
        return "q8_vnni_mm", (w.qweight, w.scales)
    return "q6k_vnni_mm", tuple(ops.q6k_vnni_pack_ggml(_random_q6k(n, k, gen), n, k))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="rows of x")
    parser.add_argument("--reps", type=int, default=20, help="calls timed per (kernel, level, M)")
    parser.add_argument(
        "--kernels",
        nargs="+",
        default=list(SHAPES),
        choices=list(SHAPES),
        help="kernels and shapes to time (default: all)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    levels = [lv.name for lv in native.KERNEL_LEVELS if native.level_ops(lv.name) is not None]
    results = []
    for name in args.kernels:
        weights = None
        for level in levels:
            ops = native.level_ops(level)
            if weights is None:  # one packed weight serves every level
                weights = _weight(name, ops, torch.Generator().manual_seed(0))
            op, (codes, scales) = weights
            for m in args.m:
                x = torch.randn(m, SHAPES[name][1], generator=torch.Generator().manual_seed(m))
                getattr(ops, op)(x, codes, scales)  # warm-up
                ts = []
                for _ in range(args.reps):
                    t0 = time.thread_time()
                    getattr(ops, op)(x, codes, scales)
                    ts.append(time.thread_time() - t0)
                results.append(
                    {
                        "kernel": name,
                        "shape": SHAPES[name],
                        "level": level,
                        "m": m,
                        "min_ms": round(min(ts) * 1e3, 3),
                        "median_ms": round(statistics.median(ts) * 1e3, 3),
                    }
                )
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "levels": levels,
                "threads": 1,
                "clock": "thread CPU time",
                "load_average_at_end": os.getloadavg(),
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
