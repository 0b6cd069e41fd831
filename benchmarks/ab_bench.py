"""`llamita bench` of two source trees side by side: rounds alternate A, B, A, B... in fresh
processes, so both see the same machine load; medians of each test over the rounds, and the
load average before and after. For before/after figures of a change (docs/performance.md):

    git archive OLD src | tar -x -C /tmp/old
    python benchmarks/ab_bench.py --a /tmp/old/src --b src --rounds 3 -- --threads 2 -b 8 -r 5

Arguments after `--` go to `llamita bench` (--json is added). Both trees should share
LLAMITA_COMPILED_DIR (packages are keyed by the model code, so each tree gets its own where
that differs); bench builds missing ones in its untimed warm-up. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def bench(src: str, args: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    out = subprocess.run(
        [sys.executable, "-m", "llamita.cli.main", "bench", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {r["test"]: r["tokens_per_second"] for r in json.loads(out)["results"]}


def alternate(
    description: str, run: Callable[[str, list[str]], T], passed_to: str
) -> tuple[argparse.Namespace, dict[str, list[T]], tuple[float, float, float]]:
    """Parse --a, --b, --rounds and the arguments after `--` (for `passed_to`), then run
    run(tree, those arguments) for A then B each round; returns the arguments, each side's
    results and the load average before."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--a", required=True, help="source folder holding llamita/ (before)")
    parser.add_argument("--b", required=True, help="source folder holding llamita/ (after)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A then B (default 3)")
    parser.add_argument("extra", nargs="*", help=f"arguments of {passed_to} (after --)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs: dict[str, list[T]] = {"a": [], "b": []}
    for _ in range(args.rounds):
        for side in ("a", "b"):
            runs[side].append(run(getattr(args, side), args.extra))
    return args, runs, load_before


def main() -> None:
    args, runs, load_before = alternate(__doc__.split("\n\n")[0], bench, "`llamita bench`")
    tests = sorted({t for r in runs["a"] + runs["b"] for t in r})
    medians = {side: {t: statistics.median(r[t] for r in runs[side] if t in r) for t in tests} for side in runs}
    print(
        json.dumps(
            {
                "a": args.a,
                "b": args.b,
                "bench_args": args.extra,
                "rounds": runs,
                "median_tokens_per_second": medians,
                "b_over_a": {t: medians["b"][t] / medians["a"][t] for t in tests},
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
