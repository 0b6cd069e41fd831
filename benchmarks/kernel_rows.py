"""llamita's matmul kernels at every SIMD level this CPU has, per rows of x: the cost of one
call in CPU time of the calling thread (1 thread), so that a machine shared with other work
still gives comparable figures (wall time on a loaded machine swings 10x).

Kernels and shapes: the int8 kernel on the default model's tied output projection (49152 x 576,
the largest matmul of its decode step; batched decode runs it at 8 rows), the Q6_K kernel on
the 8B's output projection (128256 x 4096) and ffn_down (4096 x 14336), against the int8 kernel
on the same shapes (what Q6_K weights were re-quantized to before), the 4-bit kernel on the
default model's four matmuls of a layer (Q4_1; q/k/v and gate/up fused, as the model runs
them: 512 rows is a pp512 prefill chunk) and the Q4_K kernel on the 8B's q/o projection.
Weights are random.

    python benchmarks/kernel_rows.py [--m 1 2 4 8 16] [--reps 20] [--kernels q8_head q6k_down]
        [--levels avx2]

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
    "q4_qkv": (960, 576),
    "q4_o": (576, 576),
    "q4_gate_up": (3072, 576),
    "q4_down": (576, 1536),
    "q4k_o": (4096, 4096),
}


def _random_q6k(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Valid random Q6_K bytes (210-byte blocks: ql, qh, int8 sc, f16 d), built directly."""
    blocks = torch.randint(0, 256, (n * k // 256, 210), generator=gen, dtype=torch.uint8)
    blocks[:, 208:210] = (torch.rand(blocks.shape[0], 1, generator=gen) * 1e-3).to(torch.float16).view(torch.uint8)
    return blocks.reshape(-1)


def _random_blocks(n: int, k: int, block_bytes: int, halves: int, gen: torch.Generator) -> torch.Tensor:
    """Valid random GGML blocks of 256 (Q4_K) or 32 (Q4_1) weights: random bytes whose first
    `halves` f16 values (d, dmin / m) are small positive numbers."""
    per_block = 256 if block_bytes == 144 else 32
    blocks = torch.randint(0, 256, (n * k // per_block, block_bytes), generator=gen, dtype=torch.uint8)
    f16 = (torch.rand(blocks.shape[0], halves, generator=gen) * 1e-2).to(torch.float16)
    blocks[:, : 2 * halves] = f16.view(torch.uint8)
    return blocks.reshape(-1)


def _weight(name: str, ops, gen: torch.Generator) -> tuple[str, tuple[torch.Tensor, torch.Tensor]]:
    n, k = SHAPES[name]
    if name.startswith("q4k"):
        return "q4k_vnni_mm", tuple(ops.q4k_vnni_pack_ggml(_random_blocks(n, k, 144, 2, gen), n, k))
    if name.startswith("q4"):
        return "q4_vnni_mm", tuple(ops.q4_vnni_pack_ggml(_random_blocks(n, k, 20, 2, gen), n, k, True))
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
        default=[name for name in SHAPES if not name.startswith("q4")],
        choices=list(SHAPES),
        help="kernels and shapes to time (default: the int8 and Q6_K ones)",
    )
    parser.add_argument("--levels", nargs="+", help="kernel levels to time (default: every one this CPU loads)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.levels or [lv.name for lv in native.KERNEL_LEVELS]
    levels = [name for name in names if native.level_ops(name) is not None]
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
