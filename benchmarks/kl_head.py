"""The tied output head on many rows (scoring every position: perplexity, prompt logprobs, echo)
on a kernel level whose prefill runs llamita's int8 kernels (AVX2, AVX-VNNI): the Q8_0-blocks
kernel (`q8b_vnni_mm`, activations rounded to int8 per 32) against a dense float32 matmul of the
exact dequantized weights (`q8b_vnni_dequantize` + F.linear), what model/linear.py runs from
`dense_min_rows(head=True)` rows on.

The default model's head (49152 x 576), random Q8_0 bytes, x ~ N(0, 1) with a few large
columns as real hidden states have. Cost of one call in CPU time of the calling thread (1
thread), interleaved per repetition; and each result's distance from the float64 statement
(x in float64 times d * q in float64), as a fraction of the largest |logit|.

    LLAMITA_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        python benchmarks/kl_head.py [--m 16 64 128 256 512] [--reps 7]

Prints JSON: per M, the median and minimum milliseconds of each way and their ratio (dense /
kernel), and the errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from llamita.kernels import int8, native
from llamita.weights.quants import GGMLType, dequantize

sys.path.insert(0, str(Path(__file__).parent))
from q8_blocks import SHAPE, interleaved_ms, random_head  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[16, 64, 128, 256, 512], help="rows of x")
    parser.add_argument("--reps", type=int, default=7, help="calls timed per way and M (default 7)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, k = SHAPE
    raw, w = random_head()
    exact = dequantize(raw.reshape(-1), GGMLType.Q8_0, (n, k)).double()
    ways = {
        "kernel": lambda x: int8.int8_linear(x, w, torch.float32),
        "dense": lambda x: F.linear(x, int8.dequantize_int8(w, torch.float32)),
    }
    results = []
    for m in args.m:
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
        x[:, :4] *= 20  # outlier columns, as in real hidden states
        ref = x.double() @ exact.T
        row: dict = {"m": m}
        for name, way in ways.items():
            row[f"{name}_max_err"] = float((way(x).double() - ref).abs().max() / ref.abs().max())
        row |= interleaved_ms(ways, x, args.reps)
        row["dense_over_kernel"] = round(row["dense_median_ms"] / row["kernel_median_ms"], 3)
        results.append(row)
    out = {
        "torch": torch.__version__,
        "level": native.kernel_level(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "shape": SHAPE,
        "threads": 1,
        "clock": "thread CPU time",
        "load_average_at_end": os.getloadavg(),
        "results": results,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
