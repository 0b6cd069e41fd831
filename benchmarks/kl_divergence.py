"""Accuracy of the quantized paths: mean KL divergence from float32, llamita against llama.cpp.

For each quantized GGUF (the default model's Q4_1, and the types in --also made by `llamita
quantize` from the float32 file), over one text, with windows of --ctx tokens:

  base      the same weights dequantized to float32: a F32 GGUF written by `llamita quantize
            -t F32 --allow-requantize`; llamita saves its base with `perplexity --dtype float32
            --kl-divergence-base`, llama.cpp with `llama-perplexity --kl-divergence-base`;
  llamita   `llamita perplexity --kl-divergence` on the default path (compact weights, int8
            activations in llamita's kernels), natively and with LLAMITA_ISA=avx2;
  llama.cpp `llama-perplexity --kl-divergence` on the same file, against its own base (and,
            with --llama-perplexity-avx2, a build for AVX2 only, against the same base);
  cross     llamita's quantized path against llama.cpp's base (same reference for both).

    python benchmarks/kl_divergence.py --text /usr/share/common-licenses/GPL-3 \\
        --llama-perplexity /work/scratch/llbuild/bin/llama-perplexity --work /tmp/kld --threads 1 \\
        --llama-perplexity-avx2 /work/scratch/llbuild-avx2/bin/llama-perplexity

--isa avx2 holds torch to AVX2 too (ISA_ENV), as a CPU without the higher instructions runs.

Prints one JSON object: {"config", "files": {NAME: {"llamita-native", "llamita-avx2",
"llama.cpp", "llama.cpp-avx2", "llamita-vs-llama.cpp-base"}}}; each entry holds mean_kld, its stderr, median,
p99, same_top_p (fraction) and the perplexities. Runs take minutes (one forward per window).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

LLAMITA = [sys.executable, "-m", "llamita.cli.main"]
# What a run held to a level sets besides LLAMITA_ISA, so that torch's own kernels (ATen's
# vectorized ops, MKL, oneDNN) use no instruction above it either.
ISA_ENV = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def llamita(args: list[str], env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(
        [*LLAMITA, *args, "--json"], check=True, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    return json.loads(out.stdout)


# llama-perplexity's summary lines -> our field names (its Δp and same-top lines are in percent).
_LLAMA_CPP_LINES = {
    r"Mean PPL\(Q\)\s*:\s*(\S+)\s*±\s*(\S+)": ("perplexity", "perplexity_stderr", 1.0),
    r"Mean PPL\(base\)\s*:\s*(\S+)\s*±\s*(\S+)": ("perplexity_base", "perplexity_base_stderr", 1.0),
    r"Mean\s+KLD:\s*(\S+)\s*±\s*(\S+)": ("mean_kld", "mean_kld_stderr", 1.0),
    r"Same top p:\s*(\S+)\s*±\s*(\S+) %": ("same_top_p", "same_top_p_stderr", 0.01),
    r"RMS Δp\s*:\s*(\S+)\s*±\s*(\S+) %": ("rms_p_diff", "rms_p_diff_stderr", 0.01),
}
_LLAMA_CPP_SINGLE = {r"Median\s+KLD:\s*(\S+)": "kld_median", r"99\.0%\s+KLD:\s*(\S+)": "kld_p99"}


def parse_llama_cpp(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for pattern, (name, err, unit) in _LLAMA_CPP_LINES.items():
        m = re.search(pattern, text)
        if m:
            out[name], out[err] = float(m[1]) * unit, float(m[2]) * unit
    for pattern, name in _LLAMA_CPP_SINGLE.items():
        m = re.search(pattern, text)
        if m:
            out[name] = float(m[1])
    return out


def llama_perplexity(binary: str, model: Path, base: Path, args: argparse.Namespace, text: Path | None) -> str:
    cmd = [binary, "-m", str(model), "--kl-divergence-base", str(base), "-c", str(args.ctx), "-t", str(args.threads)]
    cmd += ["-f", str(text)] if text else ["--kl-divergence"]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return done.stdout + done.stderr


KEEP = (
    "mean_kld",
    "mean_kld_stderr",
    "kld_median",
    "kld_p99",
    "same_top_p",
    "same_top_p_stderr",
    "rms_p_diff",
    "perplexity",
    "perplexity_base",
    "tokens_scored",
    "seconds",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="quantized GGUF (default: the default model)")
    parser.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    parser.add_argument("--ctx", type=int, default=512, help="window size in tokens (default 512)")
    parser.add_argument("--threads", type=int, default=1, help="threads for both programs (default 1)")
    parser.add_argument("--also", nargs="*", default=["Q4_K_M"], help="types to quantize from F32 (default Q4_K_M)")
    parser.add_argument("--isa", nargs="*", default=["native", "avx2"], help="LLAMITA_ISA levels (default native avx2)")
    parser.add_argument("--llama-perplexity", help="llama.cpp's llama-perplexity binary (skipped if not given)")
    parser.add_argument("--llama-perplexity-avx2", help="the same built for AVX2 only (needs --llama-perplexity)")
    parser.add_argument("--work", type=Path, default=Path("kld-work"), help="folder for the files (~0.5 GB each)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from llamita.engine.loader import resolve_model_path

        args.model = Path(resolve_model_path(None))
    t = ["-c", str(args.ctx), "--threads", str(args.threads)]

    f32 = args.work / "f32.gguf"
    if not f32.exists():
        subprocess.run([*LLAMITA, "quantize", str(args.model), str(f32), "-t", "F32", "--allow-requantize"], check=True)
    files = {args.model.stem: args.model}
    for kind in args.also:
        path = args.work / f"{kind.lower()}.gguf"
        if not path.exists():
            subprocess.run([*LLAMITA, "quantize", str(f32), str(path), "-t", kind], check=True)
        files[kind] = path

    base = args.work / "base-llamita.kld"
    base_run = llamita(
        ["perplexity", str(args.text), "-m", str(f32), "--dtype", "float32", "--kl-divergence-base", str(base), *t]
    )
    base_cpp = args.work / "base-llama.cpp.kld"
    if args.llama_perplexity and not base_cpp.exists():
        llama_perplexity(args.llama_perplexity, f32, base_cpp, args, args.text)

    report: dict = {
        "config": {
            "text": str(args.text),
            "ctx": args.ctx,
            "threads": args.threads,
            "base_perplexity": base_run["perplexity"],
            "cpu": platform.processor() or _cpu_name(),
            "load_average_start": os.getloadavg(),
        },
        "files": {},
    }
    for name, path in files.items():
        row: dict = {}
        for isa in args.isa:
            r = llamita(
                ["perplexity", "--kl-divergence", "--kl-divergence-base", str(base), "-m", str(path), *t],
                {"LLAMITA_ISA": isa, **ISA_ENV.get(isa, {})},
            )
            row[f"llamita-{isa}"] = {k: r[k] for k in KEEP} | {"dtype": r["dtype"], "compact": r["compact"]}
        if args.llama_perplexity:
            row["llama.cpp"] = parse_llama_cpp(llama_perplexity(args.llama_perplexity, path, base_cpp, args, None))
            if args.llama_perplexity_avx2:
                out = llama_perplexity(args.llama_perplexity_avx2, path, base_cpp, args, None)
                row["llama.cpp-avx2"] = parse_llama_cpp(out)
            r = llamita(["perplexity", "--kl-divergence", "--kl-divergence-base", str(base_cpp), "-m", str(path), *t])
            row["llamita-vs-llama.cpp-base"] = {k: r[k] for k in KEEP}
        report["files"][name] = row
        print(json.dumps({name: row}), file=sys.stderr)
    report["config"]["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    raise SystemExit(main())
