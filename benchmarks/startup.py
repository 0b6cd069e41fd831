"""Time from typing `llamita run` to its first token on stdout, as a user sees it.

Each run starts the `llamita` command in a fresh process (warm file cache after the first
run), greedy, and measures wall-clock seconds until the first byte of the answer reaches
stdout (`llamita run` writes progress to stderr and flushes every piece of text as it comes).
One untimed run first (it fills the page cache and, with --compile, builds the compiled step
if it is not on disk), then `--repetitions` timed ones; the median is kept. It also times,
in separate fresh processes, what the start is made of: the bare interpreter, `import torch`
and `import llamita.cli.main`, so a slow start can be told apart from a slow machine.

    python benchmarks/startup.py                    # the embedded default model
    python benchmarks/startup.py --compile -r 5
    python benchmarks/startup.py --model model.gguf --threads 2

Prints JSON; times in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def llamita_command() -> list[str]:
    """The console script users type, else the module through this interpreter."""
    script = shutil.which("llamita")
    return [script] if script else [sys.executable, "-m", "llamita"]


def time_to_first_token(args: list[str], env: dict[str, str]) -> float:
    """Seconds from starting `llamita run ARGS` to the first byte on its stdout (the run is
    then left to finish, unread output discarded)."""
    return run_timed(args, env)[0]


def run_timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """`llamita run ARGS`: seconds to the first byte on its stdout, and its whole stderr (the
    status and speed lines)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(llamita_command() + ["run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.read(1)
    seconds = time.perf_counter() - t0
    proc.stdout.read()
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0 or not first:
        raise RuntimeError(f"llamita run {' '.join(args)} failed (exit {proc.returncode}): {err[-500:]}")
    return seconds, err


def time_python(code: str, env: dict[str, str]) -> float:
    """Seconds a fresh interpreter takes to run `code` and exit."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the embedded model)")
    parser.add_argument("--prompt", default="Hola")
    parser.add_argument("-r", "--repetitions", type=int, default=5)
    parser.add_argument("-t", "--threads", type=int, help="OMP_NUM_THREADS for the runs (default: unset)")
    parser.add_argument("--compile", action="store_true", help="llamita run --compile")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    run_args = [args.prompt, "-n", "8", "--temperature", "0"]
    if args.model:
        run_args += ["--model", str(args.model)]
    if args.compile:
        run_args.append("--compile")

    def median_of(measure) -> tuple[float, list[float]]:  # noqa: ANN001
        measure()  # untimed: page cache, compiled step
        samples = [measure() for _ in range(args.repetitions)]
        return statistics.median(samples), samples

    first_token, samples = median_of(lambda: time_to_first_token(run_args, env))
    report = {
        "config": {
            "model": str(args.model) if args.model else "default",
            "compile": args.compile,
            "repetitions": args.repetitions,
            "threads": args.threads,
        },
        "first_token_seconds": round(first_token, 3),
        "first_token_samples": [round(s, 3) for s in samples],
        "python_seconds": round(median_of(lambda: time_python("pass", env))[0], 3),
        "import_torch_seconds": round(median_of(lambda: time_python("import torch", env))[0], 3),
        "import_llamita_cli_seconds": round(median_of(lambda: time_python("import llamita.cli.main", env))[0], 3),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
