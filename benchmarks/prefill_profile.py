"""Where one prompt prefill's time goes, as `llamita bench -p N` runs it: the engine's prefill of
N random tokens from an empty paged cache (one chunk of up to 512 tokens, the prefix cache off),
in CPU time, so that a machine shared with other work still gives comparable figures.

    python benchmarks/prefill_profile.py [--model PATH] [-p 512] [--threads 1] [--reps 7] [--ops 25]

Prints JSON: the whole prefill's CPU seconds (minimum and median of `--reps` runs: the calling
thread's CPU time at 1 thread, the process's at more, which counts every thread's spinning
too), then, from one run under torch.profiler, the `--ops` aten operators that took the most
self CPU time (milliseconds over the run, calls). `--ops 0` skips the profile. Held to AVX2 with
LLAMITA_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from llamita.engine.llm_engine import GenerationStats, LLMEngine
from llamita.engine.loader import load_model
from llamita.kernels import native
from llamita.sampling_params import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="GGUF file or library name (default: the default model)")
    parser.add_argument("-p", "--prompt", type=int, default=512, help="prompt tokens (default 512)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--reps", type=int, default=7, help="timed prefills (default 7)")
    parser.add_argument("--ops", type=int, default=25, help="profiled operators listed (default 25; 0: no profile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    engine = LLMEngine(loaded, kv_cache_tokens=args.prompt + 64, max_running=1, prefix_caching=False, compile=False)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(loaded.config.vocab_size, loaded.tokenizer.vocab_size), (args.prompt,), generator=gen)
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    clock = time.thread_time if args.threads == 1 else time.process_time

    def prefill() -> None:
        for _ in engine.generate([ids.tolist()], [params], stats=GenerationStats()):
            pass

    prefill()  # warm-up
    seconds = []
    for _ in range(args.reps):
        t0 = clock()
        prefill()
        seconds.append(clock() - t0)
    report: dict[str, object] = {
        "kernels": native.kernel_level(),
        "threads": args.threads,
        "prompt_tokens": args.prompt,
        "cpu_seconds_min": round(min(seconds), 4),
        "cpu_seconds_median": round(statistics.median(seconds), 4),
        "cpu_seconds": [round(s, 4) for s in seconds],
        "load_average": os.getloadavg(),
    }
    if args.ops:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            prefill()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        report["profiled_self_cpu_ms"] = round(total / 1e3, 2)
        report["ops"] = [
            {"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2), "calls": e.count}
            for e in events[: args.ops]
        ]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
