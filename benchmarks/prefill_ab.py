"""One prompt prefill's CPU time (benchmarks/prefill_profile.py) of two source trees side by
side: rounds alternate A, B, A, B... in fresh processes, so both see the same machine load.
For before/after figures of a prefill change (docs/performance.md):

    git archive OLD src | tar -x -C /tmp/old
    python benchmarks/prefill_ab.py --a /tmp/old/src --b src --rounds 3 [-- --threads 1 --reps 5]

Arguments after `--` go to prefill_profile.py (`--ops 0` is added). CPU time rather than wall
time: on a machine other jobs share, wall time swings 10x (docs/performance.md, "Threads").
Prints JSON: each round's minimum and median CPU seconds per side, the median over rounds of
the minima, B over A, and the load average before and after.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_bench import alternate  # noqa: E402

PROFILE = Path(__file__).with_name("prefill_profile.py")


def run(src: str, args: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    out = subprocess.run(
        [sys.executable, str(PROFILE), *args, "--ops", "0"], env=env, capture_output=True, text=True, check=True
    ).stdout
    report = json.loads(out)
    return {"min": report["cpu_seconds_min"], "median": report["cpu_seconds_median"], "kernels": report["kernels"]}


def main() -> None:
    args, runs, load_before = alternate(__doc__.split("\n\n")[0], run, "prefill_profile.py")
    medians = {side: statistics.median(r["min"] for r in runs[side]) for side in runs}
    print(
        json.dumps(
            {
                "a": args.a,
                "b": args.b,
                "profile_args": args.extra,
                "rounds": runs,
                "median_of_min_cpu_seconds": medians,
                "b_over_a": medians["b"] / medians["a"],
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
