"""llamita against its peers on the same GGUF file, one after another, in one run.

Peers:
  llama.cpp     its `llama-bench` binary (--llama-bench PATH, or on PATH), `-o json`. Build it
                from the source vendored in the llama-cpp-python sdist, in a scratch folder
                (see the performance issue); on this CPU add -mno-amx-tile -mno-amx-int8
                -mno-amx-bf16 to its compile flags.
  transformers  AutoModelForCausalLM on the same GGUF (transformers dequantizes it to float32;
                also run in bfloat16 with --hf-dtype bfloat16), pp = one forward over the prompt,
                tg = `generate` of N new tokens from one token, greedy, with its KV cache.
A peer that is not installed is skipped, with the reason in the output.

Every test is run `--repetitions` times after a warm-up and the median is kept; ratios are
llamita's median over the peer's, measured in the same run (this machine is shared and noisy:
compare ratios, not absolute numbers across runs).

    python benchmarks/compare_peers.py --threads 2 --llama-bench /path/to/llama-bench
    python benchmarks/compare_peers.py --model model.gguf -p 512 -n 128 -r 5 --batch 8
    python benchmarks/compare_peers.py --compile --rounds 3 --skip transformers ...

--startup adds the seconds from starting `llamita run` to its first token on stdout
("llamita-startup", benchmarks/startup.py; with --compile, through the compiled step).
--compile adds llamita with its compiled decode step ("llamita-compiled"); --rounds R runs every
peer R times in turn (eager, compiled, llama.cpp, ...), so a load spike on this shared machine
hits all of them, and keeps the median of each peer's per-round medians.

Prints one JSON object: {"config", "llamita", "llama.cpp", "transformers", "ratios", "skipped"}.
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


def run_llamita(model: Path, args: argparse.Namespace, compile: bool = False) -> dict[str, float]:
    # --compile only changes tg (prefill and the batched engine stay eager): only tg is run.
    n_prompt = 0 if compile else args.n_prompt
    cmd = [
        sys.executable,
        "-m",
        "llamita.cli.main",
        "bench",
        "--model",
        str(model),
        "-p",
        str(n_prompt),
        "-n",
        str(args.n_gen),
        "-r",
        str(args.repetitions),
        "--threads",
        str(args.threads),
        "--json",
    ]
    if args.batch and not compile:
        cmd += ["-b", str(args.batch)]
    if compile:
        cmd.append("--compile")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    return {r["test"]: r["tokens_per_second"] for r in report["results"]}


def run_startup(model: Path, args: argparse.Namespace) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).parent))
    from startup import time_to_first_token

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    run_args = ["Hola", "-n", "8", "--temperature", "0", "--model", str(model)]
    if args.compile:
        run_args.append("--compile")
    time_to_first_token(run_args, env)  # untimed: page cache
    return {"first_token_s": statistics.median(time_to_first_token(run_args, env) for _ in range(args.repetitions))}


def run_llama_cpp(model: Path, args: argparse.Namespace) -> dict[str, float] | str:
    binary = args.llama_bench or shutil.which("llama-bench")
    if not binary or not Path(binary).exists():
        return "llama-bench not found (give --llama-bench PATH)"
    cmd = [
        binary,
        "-m",
        str(model),
        "-p",
        str(args.n_prompt),
        "-n",
        str(args.n_gen),
        "-r",
        str(args.repetitions),
        "-t",
        str(args.threads),
        "-o",
        "json",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    results = {}
    for row in json.loads(out):
        test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        samples = row.get("samples_ts") or [row["avg_ts"]]
        results[test] = statistics.median(samples)
    return results


def run_transformers(model: Path, args: argparse.Namespace) -> dict[str, float] | str:
    try:
        import torch
        import transformers
    except ImportError as e:
        return f"transformers not installed ({e})"
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.hf_dtype)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(model.parent), gguf_file=model.name, dtype=dtype).eval()
    vocab = hf.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (1, args.n_prompt), generator=g)
    first = torch.randint(0, vocab, (1, 1), generator=g)

    def timed(fn) -> float:  # noqa: ANN001
        fn()
        seconds = []
        for _ in range(args.repetitions):
            t0 = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - t0)
        return statistics.median(seconds)

    results = {}
    with torch.inference_mode():
        if args.n_prompt:
            results[f"pp{args.n_prompt}"] = args.n_prompt / timed(lambda: hf(prompt))
        if args.n_gen:
            gen = dict(max_new_tokens=args.n_gen, min_new_tokens=args.n_gen, do_sample=False)
            results[f"tg{args.n_gen}"] = args.n_gen / timed(lambda: hf.generate(first, **gen))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the embedded model)")
    parser.add_argument("-p", "--n-prompt", type=int, default=512)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("-r", "--repetitions", type=int, default=5)
    parser.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("-b", "--batch", type=int, default=8, help="llamita's batched generation test (0 = skip)")
    parser.add_argument("--llama-bench", help="path to llama.cpp's llama-bench binary")
    parser.add_argument("--hf-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip", action="append", default=[], choices=["llama.cpp", "transformers"])
    parser.add_argument("--compile", action="store_true", help="also llamita bench --compile")
    parser.add_argument("--rounds", type=int, default=1, help="run every peer this many times in turn")
    parser.add_argument(
        "--startup", action="store_true", help="also time `llamita run` from start to first token (seconds)"
    )
    args = parser.parse_args(argv)
    if args.model is None:
        from llamita.engine.loader import default_model_path

        args.model = default_model_path()

    report: dict[str, object] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "skipped": {},
    }
    runners = [("llamita", run_llamita)]
    if args.compile:
        runners.append(("llamita-compiled", lambda m, a: run_llamita(m, a, compile=True)))
    if args.startup:
        runners.append(("llamita-startup", run_startup))
    for name, runner in (("llama.cpp", run_llama_cpp), ("transformers", run_transformers)):
        if name in args.skip:
            report["skipped"][name] = "--skip"  # type: ignore[index]
        else:
            runners.append((name, runner))
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name, _ in runners}
    for _ in range(args.rounds):
        for name, runner in runners:
            if name in report["skipped"]:  # type: ignore[operator]
                continue
            result = runner(args.model, args)
            if isinstance(result, str):
                report["skipped"][name] = result  # type: ignore[index]
            else:
                rounds[name].append(result)
    for name, results in rounds.items():
        if results:
            report[name] = {test: statistics.median(r[test] for r in results) for test in results[0]}
            if args.rounds > 1:
                report[f"{name} per round"] = results
    ours = report["llamita"]
    ratios: dict[str, float] = {}
    for mine in ("llamita", "llamita-compiled"):
        for name in ("llama.cpp", "transformers"):
            for test, tps in report.get(name, {}).items() if mine in report else ():
                if test in report[mine] and tps:
                    ratios[f"{test} {mine}/{name}"] = round(report[mine][test] / tps, 3)
    if "llamita-compiled" in report:
        tg = f"tg{args.n_gen}"
        if tg in report["llamita-compiled"] and tg in ours:
            ratios[f"{tg} llamita-compiled/llamita"] = round(report["llamita-compiled"][tg] / ours[tg], 3)
    tg = f"tg{args.n_gen}"
    if args.batch and tg in ours and f"{tg}x{args.batch}" in ours:
        ratios[f"{tg}x{args.batch} / {tg}"] = round(ours[f"{tg}x{args.batch}"] / ours[tg], 3)
    report["ratios"] = ratios
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
