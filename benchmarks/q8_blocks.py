"""GGML Q8_0 in its own blocks (kernels/int8.py layout "vnni_q8b", `q8b_vnni_mm`) against the
per-row int8 it replaced (`q8_vnni_mm`), side by side at every SIMD level this CPU has, on the
default model's tied output projection (49152 x 576, the largest matmul of its decode step;
batched decode runs it at 8 rows). The same random Q8_0 bytes feed both: packed in their
blocks, and dequantized then re-quantized per row as the loader did before.

Cost of one call in CPU time of the calling thread (1 thread), so that a machine shared with
other work still gives comparable figures; interleaved per repetition.

    python benchmarks/q8_blocks.py [--m 1 8] [--reps 30]

Prints JSON: per level and M, the median and minimum milliseconds per call of each kernel and
their ratio (blocks / per row), and the resident bytes of each weight.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch

from llamita.kernels import int8, native
from llamita.weights.quants import GGMLType, dequantize, quantize

SHAPE = (49152, 576)


def random_head() -> tuple[torch.Tensor, int8.Int8Weight]:
    """Random Q8_0 bytes of the default model's head shape (49152, 576 // 32 * 34) and the
    same bytes packed in their blocks (layout "vnni_q8b")."""
    n, k = SHAPE
    gen = torch.Generator().manual_seed(0)
    raw = quantize((torch.rand(n, k, generator=gen) - 0.5) * 0.1, GGMLType.Q8_0).view(n, -1)
    return raw, int8.q8_0_blocks(n, k, lambda a, b: raw[a:b])


def interleaved_ms(calls: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor, reps: int) -> dict[str, float]:
    """Each call's median and minimum milliseconds on `x` (thread CPU time), `reps` times each,
    interleaved, after one warm-up: {"NAME_median_ms", "NAME_min_ms"}."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call(x)  # warm-up
    for _ in range(reps):
        for name, call in calls.items():
            t0 = time.thread_time()
            call(x)
            times[name].append(time.thread_time() - t0)
    out = {}
    for name, ts in times.items():
        out[f"{name}_median_ms"] = round(statistics.median(ts) * 1e3, 3)
        out[f"{name}_min_ms"] = round(min(ts) * 1e3, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8], help="rows of x (default 1 8)")
    parser.add_argument("--reps", type=int, default=30, help="calls timed per kernel, level and M (default 30)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, k = SHAPE
    raw, blocks = random_head()
    per_row = int8.quantize_int8(n, k, lambda a, b: dequantize(raw[a:b].reshape(-1), GGMLType.Q8_0, (b - a, k)))
    levels = [lv.name for lv in native.KERNEL_LEVELS if native.level_ops(lv.name) is not None]
    results = []
    for level in levels:
        ops = native.level_ops(level)
        calls = {
            "per_row": lambda x: ops.q8_vnni_mm(x, per_row.qweight, per_row.scales),
            "blocks": lambda x: ops.q8b_vnni_mm(x, blocks.qweight, blocks.scales),
        }
        for m in args.m:
            x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
            row: dict = {"level": level, "m": m, **interleaved_ms(calls, x, args.reps)}
            row["ratio_median"] = round(row["blocks_median_ms"] / row["per_row_median_ms"], 3)
            results.append(row)
    out = {
        "torch": torch.__version__,
        "shape": SHAPE,
        "levels": levels,
        "threads": 1,
        "clock": "thread CPU time",
        "bytes": {"blocks": blocks.nbytes, "per_row": per_row.nbytes},
        "load_average_at_end": os.getloadavg(),
        "results": results,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
