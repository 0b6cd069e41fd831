"""`llamita run` with default flags, before and after its compiled decode step is built.

The decode step is compiled by default (engine/step_builder.py): a run of a model shape with no
package answers eagerly while a background process builds one, and later runs decode through
it. This measures what a user sees, in fresh `llamita run` processes, greedy, --raw, -n 128:

* cold: an empty package folder (LLAMITA_COMPILED_DIR): seconds to the first token on stdout,
  generation tokens/s (the builder shares the CPU meanwhile) and the decode path said on stderr;
  then the seconds until the background builder has written the package;
* warm: `--repetitions` runs once it is there (medians): first token, generation tokens/s;
* eager: the same with --no-compile, for reference.

    python benchmarks/default_decode.py                       # this CPU's kernels
    LLAMITA_ISA=avx2 python benchmarks/default_decode.py      # held to AVX2

Prints JSON; times in seconds. Generation tokens/s is `llamita run`'s own figure (decode steps
only); a run may stop before 128 tokens at an end-of-text token (`tokens` says how many).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from startup import run_timed  # noqa: E402

_SPEED = re.compile(r"generation: (\d+) tokens, ([\d.]+) tokens/s")
_PATH = re.compile(r"· ([^·]*?) decode ·")
_PACKAGE = re.compile(r"decode-[0-9a-f]{32}\.pt2")


def one_run(args: list[str], env: dict[str, str]) -> dict[str, object]:
    seconds, err = run_timed(args, env)
    speed, path = _SPEED.search(err), _PATH.search(err)
    if speed is None or path is None:
        raise RuntimeError(f"no speed or decode path in: {err[-500:]}")
    return {
        "first_token_seconds": round(seconds, 3),
        "tokens": int(speed.group(1)),
        "tokens_per_second": float(speed.group(2)),
        "decode": path.group(1),
    }


def medians(runs: list[dict[str, object]]) -> dict[str, object]:
    return {
        "first_token_seconds": statistics.median(r["first_token_seconds"] for r in runs),
        "tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs),
        "decode": sorted({str(r["decode"]) for r in runs}),
        "runs": runs,
    }


def wait_for_package(folder: Path, timeout: float) -> float:
    """Seconds until a package (or a failure record) appears in `folder` (under its final
    name: decode-KEY.pt2, not the builder's temporary decode-KEYxxxxxxxx.pt2)."""
    t0 = time.perf_counter()
    while not any(_PACKAGE.fullmatch(p.name) for p in folder.iterdir()) and not any(folder.glob("*.failed")):
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"no package in {folder} after {timeout} s")
        time.sleep(1)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the embedded model)")
    parser.add_argument("--prompt", default="Once upon a time, in a small village by the sea,")
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    args = parser.parse_args(argv)
    run_args = [args.prompt, "--raw", "-n", str(args.n_gen), "--temperature", "0"]
    if args.model:
        run_args += ["--model", str(args.model)]
    with tempfile.TemporaryDirectory(prefix="llamita-aoti-") as folder:
        env = {**os.environ, "LLAMITA_COMPILED_DIR": folder}
        env.pop("LLAMITA_COMPILE", None)
        cold = one_run(run_args, env)
        build_seconds = cold["first_token_seconds"] + wait_for_package(Path(folder), 1800)
        time.sleep(5)  # the builder exits (and logs its peak memory) after the rename
        failed = [p.read_text() for p in Path(folder).glob("*.failed")]
        rss = [
            int(m.group(1))
            for log in Path(folder).glob("*.log")
            if (m := re.search(r"peak RSS (\d+) MiB", log.read_text(errors="replace")))
        ]
        warm = medians([one_run(run_args, env) for _ in range(args.repetitions)])
        eager = medians([one_run(run_args + ["--no-compile"], env) for _ in range(args.repetitions)])
    report = {
        "config": {
            "model": str(args.model) if args.model else "default",
            "n_gen": args.n_gen,
            "repetitions": args.repetitions,
            "isa": os.environ.get("LLAMITA_ISA", "native"),
        },
        "cold": cold,
        "package_ready_after_seconds": round(build_seconds, 1),
        "build_failed": failed,
        "builder_peak_rss_mib": rss[0] if rss else None,
        "warm": warm,
        "eager": eager,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
