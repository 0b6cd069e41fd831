"""Measure every quantization type on the default model and rewrite docs/quantization.md's tables.

For each type: re-quantize the default model from its highest-precision form (its weights
decoded to F32, a lossless step), then measure the file size, bits per weight, size against F16,
perplexity on an English and a Spanish text (benchmarks/corpus.py; ctx 512, first N windows)
and generation speed (greedy, median of R runs). Types whose weights llamita keeps as per-row
int8 are also measured with every weight expanded to bfloat16, to show what that choice costs.
The Llama 3.1 8B / 70B / 405B RAM table is computed from their shapes (llamita.jobs.memory).

    python benchmarks/quantization_table.py --chunks 20 --write-docs   # ~20 min on 2 cores
    python benchmarks/quantization_table.py --types Q4_K_M Q8_0 --chunks 2   # quick look

Prints one JSON object; with --write-docs also replaces the generated part of
docs/quantization.md (between the `<!-- generated -->` markers).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from llamita.api.llm import LLM  # noqa: E402
from llamita.engine.loader import default_model_path, load_model  # noqa: E402
from llamita.jobs.memory import LLAMA_3_1, estimate  # noqa: E402
from llamita.jobs.perplexity import perplexity, read_text_file  # noqa: E402
from llamita.jobs.quantize import quantize_model  # noqa: E402
from llamita.model.linear import Int8Linear  # noqa: E402
from llamita.sampling_params import SamplingParams  # noqa: E402

from corpus import corpus_path  # noqa: E402

ORDER = ["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_1", "Q5_0", "Q4_K_M", "Q4_1", "Q4_0", "Q3_K_M", "Q2_K"]
PROMPT = "The history of the city begins"
MARK_START, MARK_END = "<!-- generated: start -->", "<!-- generated: end -->"


def tokens_per_second(loaded, n_tokens: int, repetitions: int) -> float:
    llm = LLM.from_loaded(loaded)  # eager decoding, as measured before the one engine
    ids = loaded.tokenizer.encode(PROMPT, add_bos=loaded.tokenizer.add_bos)
    params = SamplingParams(temperature=0, max_tokens=n_tokens, ignore_eos=True)
    rates = []
    for _ in range(repetitions):
        llm.generate(prompt_token_ids=ids, params=params)
        rates.append(llm.last_stats.decode_tokens_per_second)
    return statistics.median(rates)


def measure(path: Path, texts: dict[str, str], args: argparse.Namespace) -> dict:
    out: dict = {}
    loaded = load_model(path)
    out["load_seconds"] = round(loaded.load_seconds, 2)
    out["int8_layers"] = sum(isinstance(m, Int8Linear) for m in loaded.model.modules())
    for lang, text in texts.items():
        r = perplexity(loaded.model, loaded.tokenizer, text, n_ctx=args.ctx, chunks=args.chunks)
        out[f"ppl_{lang}"] = round(r.perplexity, 4)
        out[f"ppl_{lang}_stderr"] = round(r.perplexity_stderr, 4)
    out["tg_tokens_per_second"] = round(tokens_per_second(loaded, args.tokens, args.repetitions), 2)
    del loaded
    if out["int8_layers"] and loaded_dtype_is_bf16():
        dense = load_model(path, compact=False)
        r = perplexity(dense.model, dense.tokenizer, texts["en"], n_ctx=args.ctx, chunks=args.chunks)
        out["ppl_en_dense_bf16"] = round(r.perplexity, 4)
        out["tg_tokens_per_second_dense_bf16"] = round(tokens_per_second(dense, args.tokens, args.repetitions), 2)
    return out


def n_weights(path: Path) -> int:
    from llamita.jobs.quantize import plan_model

    return sum(p.n_elements for p in plan_model(path, "F32"))


def loaded_dtype_is_bf16() -> bool:
    from llamita.engine.loader import resolve_device, resolve_dtype

    return resolve_dtype("auto", resolve_device("auto")) == torch.bfloat16


def ram_table() -> list[dict]:
    rows = []
    for size, cfg in LLAMA_3_1.items():
        for name in ORDER:
            e = estimate(cfg, name)
            rows.append(
                {
                    "model": size,
                    "type": name,
                    "file_gb": e.file_bytes / 1e9,
                    "bits_per_weight": e.bits_per_weight,
                    "ram_weights_gb": e.weight_bytes / 1e9,
                    "ram_8k_gb": e.total_bytes(8192) / 1e9,
                    "ram_128k_gb": e.total_bytes(131072) / 1e9,
                }
            )
    return rows


def markdown(result: dict) -> str:
    lines = [
        MARK_START,
        "",
        f"Measured {result['date']} on {result['machine']} ({result['threads']} threads), "
        f"torch {result['torch']}. Perplexity: ctx {result['ctx']}, first {result['chunks']} "
        f"windows ({result['tokens_scored']} tokens scored per text); lower is better. "
        f"Generation: {result['tokens']} tokens greedy, median of {result['repetitions']}.",
        "",
        "| type | file MiB | bits/weight | size vs F16 | ppl English | ppl Spanish | "
        "generation tokens/s | weights in bf16 instead of int8: ppl English, tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    f16 = next((r["file_bytes"] for r in result["types"] if r["type"] == "F16"), None)
    for r in result["types"]:
        rel = f"{r['file_bytes'] / f16:.2f}×" if f16 else "-"
        dense = (
            f"{r['ppl_en_dense_bf16']:.3f}, {r['tg_tokens_per_second_dense_bf16']:.1f}"
            if "ppl_en_dense_bf16" in r
            else "-"
        )
        lines.append(
            f"| {r['type']} | {r['file_bytes'] / 2**20:,.1f} | {r['bits_per_weight']:.2f} | "
            f"{rel} | {r['ppl_en']:.3f} ± {r['ppl_en_stderr']:.3f} | "
            f"{r['ppl_es']:.3f} ± {r['ppl_es_stderr']:.3f} | {r['tg_tokens_per_second']:.1f} | "
            f"{dense} |"
        )
    lines += [
        "",
        "RAM llamita needs for Llama 3.1 (computed from the shapes: weights as llamita "
        "keeps them on the CPU, plus a bfloat16 KV cache of 8K or 128K tokens; GB = 10⁹ bytes):",
        "",
        "| model | type | file GB | bits/weight | RAM, weights | RAM at 8K context | RAM at 128K context |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["ram"]:
        if r["model"] == "405B" and r["type"] not in ("BF16", "Q8_0", "Q4_K_M", "Q2_K"):
            continue
        lines.append(
            f"| {r['model']} | {r['type']} | {r['file_gb']:.2f} | {r['bits_per_weight']:.2f} | "
            f"{r['ram_weights_gb']:.2f} | {r['ram_8k_gb']:.2f} | {r['ram_128k_gb']:.2f} |"
        )
    lines += ["", MARK_END]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    doc = ROOT / "docs" / "quantization.md"
    body = doc.read_text()
    start, end = body.index(MARK_START), body.index(MARK_END) + len(MARK_END)
    doc.write_text(body[:start] + text + body[end:])


def speed_only(args: argparse.Namespace) -> int:
    result = json.loads(args.speed_only.read_text())
    work = args.workdir or args.speed_only.parent
    for row in result["types"]:
        path = work / f"default-{row['type']}.gguf"
        loaded = load_model(path)
        row["tg_tokens_per_second"] = round(tokens_per_second(loaded, args.tokens, args.repetitions), 2)
        if "tg_tokens_per_second_dense_bf16" in row:
            dense = load_model(path, compact=False)
            row["tg_tokens_per_second_dense_bf16"] = round(tokens_per_second(dense, args.tokens, args.repetitions), 2)
        print(json.dumps({"type": row["type"], "tg": row["tg_tokens_per_second"]}), file=sys.stderr)
    result.update(
        date=time.strftime("%Y-%m-%d"),
        tokens=args.tokens,
        repetitions=args.repetitions,
        threads=torch.get_num_threads(),
    )
    print(json.dumps(result, indent=1))
    if args.write_docs:
        write_docs(markdown(result))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", nargs="*", default=ORDER, help="types to measure (default: all)")
    ap.add_argument("--ctx", type=int, default=512, help="perplexity window in tokens (default 512)")
    ap.add_argument("--chunks", type=int, default=20, help="perplexity windows per text (default 20)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per speed run (default 64)")
    ap.add_argument("--repetitions", type=int, default=3, help="speed runs, median taken (default 3)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the model files go (default: temp)")
    ap.add_argument("--write-docs", action="store_true", help="rewrite docs/quantization.md's tables")
    ap.add_argument(
        "--speed-only",
        type=Path,
        default=None,
        metavar="JSON",
        help="re-measure only generation speed for the types in an earlier run's JSON "
        "output (files in --workdir), keeping its perplexities: for a quiet machine",
    )
    args = ap.parse_args()
    if args.speed_only:
        return speed_only(args)

    texts = {lang: read_text_file(corpus_path(lang)) for lang in ("en", "es")}
    work = args.workdir or Path(tempfile.mkdtemp(prefix="llamita-quant-"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / "default-F32.gguf"
    if not source.exists():
        quantize_model(default_model_path(), source, "F32", allow_requantize=True)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ctx": args.ctx,
        "chunks": args.chunks,
        "tokens": args.tokens,
        "repetitions": args.repetitions,
        "source": str(default_model_path()),
        "types": [],
    }
    for name in args.types:
        path = source if name == "F32" else work / f"default-{name}.gguf"
        start = time.perf_counter()
        report = quantize_model(source, path, name) if name != "F32" else None
        bpw = report.bits_per_weight if report else 8 * path.stat().st_size / n_weights(path)
        row = {
            "type": name,
            "file_bytes": path.stat().st_size,
            "bits_per_weight": round(bpw, 3),
            "quantize_seconds": round(time.perf_counter() - start, 1),
        }
        row.update(measure(path, texts, args))
        result["types"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    scored = args.chunks * (args.ctx // 2 - 1)
    result["tokens_scored"] = scored
    result["ram"] = ram_table()
    print(json.dumps(result, indent=1))
    if args.write_docs:
        write_docs(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
