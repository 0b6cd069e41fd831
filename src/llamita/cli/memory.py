"""`llamita memory`: how much RAM a model needs, by part, at each quantization and context."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from llamita.cli.common import console, fail, friendly_errors

KV_TYPES = {"bf16": 2.0, "f16": 2.0, "f32": 4.0, "q8_0": 34 / 32}
DEFAULT_QUANTS = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


@friendly_errors
def memory(
    model: Optional[Path] = typer.Argument(
        None,
        help="A .gguf file or a library name to estimate "
        "from its real tensor types; a short name not pulled yet "
        "(llamita memory llama3.1:405b) uses its shape and "
        "quantization. Default: the embedded model (or --preset).",
        show_default=False,
    ),
    preset: Optional[str] = typer.Option(
        None,
        "--preset",
        help="A known shape instead of a file: "
        "llama-3.1-8b, llama-3.1-70b, llama-3.1-405b, llama-3.2-1b, "
        "llama-3.2-3b.",
        show_default=False,
    ),
    quant: Optional[list[str]] = typer.Option(
        None,
        "--quant",
        "-q",
        help="Quantization(s) for a preset (repeatable). Default: F16 Q8_0 Q6_K Q5_K_M Q4_K_M Q3_K_M Q2_K.",
        show_default=False,
    ),
    ctx: Optional[list[int]] = typer.Option(
        None,
        "--ctx",
        "-c",
        help="Context length(s) in tokens (repeatable). Default: 8192 and the model's maximum.",
        show_default=False,
    ),
    batch: int = typer.Option(
        1, "--batch", "-b", help="Sequences held at once (each with a full KV cache of --ctx tokens)."
    ),
    kv_type: str = typer.Option(
        "bf16",
        "--kv-type",
        help="KV cache element type: bf16 (llamita's, "
        "2 bytes), f32 (with --dtype float32), or f16/q8_0 (llama.cpp's, "
        "for comparison).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
) -> None:
    """RAM needed to run a model with llamita on the CPU: weights (as llamita keeps them), KV
    cache, activations of a prefill step, tokenizer and runtime. Computed from shapes, not
    measured; GB = 10^9 bytes.

    Examples: llamita memory --preset llama-3.1-8b -q Q4_K_M -q Q8_0 --ctx 8192 --ctx 131072
              llamita memory model.gguf --ctx 4096
    """
    from llamita.config import PRESETS
    from llamita.jobs.memory import breakdown, estimate, estimate_file

    if preset is None and model is not None:
        from llamita.library.catalog import catalog_entry
        from llamita.library.local import find_local

        entry = catalog_entry(str(model))
        if entry is not None and entry.preset is not None and find_local(entry.name) is None:
            # Before a download: the table's shape and quantization say what it will need.
            model, preset, quant = None, entry.preset, quant or [entry.quant or "Q4_K_M"]
    if kv_type not in KV_TYPES:
        fail(f"--kv-type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
    if batch < 1 or any(c < 1 for c in ctx or []):
        fail("--batch and --ctx must be >= 1")
    if preset is not None:
        if model is not None:
            fail("give a model file or --preset, not both")
        if preset not in PRESETS:
            fail(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        cfg = PRESETS[preset]
        rows = [(q, estimate(cfg, q)) for q in (quant or DEFAULT_QUANTS)]
        source = preset
    else:
        if quant:
            fail("--quant goes with --preset (a file's types are read from the file)")
        from llamita.engine.loader import resolve_model_path

        model = resolve_model_path(model)
        cfg, est = estimate_file(model)
        rows, source = [(est.file_type, est)], str(model)
    contexts = ctx or sorted({min(8192, cfg.context_length), cfg.context_length})

    report: dict[str, Any] = {
        "model": source,
        "params": rows[0][1].n_params,
        "context_length": cfg.context_length,
        "batch": batch,
        "kv_type": kv_type,
        "estimates": [],
    }
    for q, est in rows:
        for c in contexts:
            parts = breakdown(cfg, est, c, batch, KV_TYPES[kv_type])
            report["estimates"].append(
                {
                    "type": q,
                    "ctx": c,
                    "file_bytes": est.file_bytes,
                    "bits_per_weight": round(est.bits_per_weight, 2),
                    "weights": parts.weights,
                    "kv_cache": parts.kv_cache,
                    "activations": parts.activations,
                    "tokenizer": parts.tokenizer,
                    "runtime": parts.runtime,
                    "total": parts.total,
                }
            )
    if as_json:
        print(json.dumps(report))
        return
    table = Table(
        "type",
        "ctx",
        "file",
        "bits/w",
        "weights",
        "KV",
        "activ.",
        "tok+rt",
        "total",
        title=f"{source}: {report['params'] / 1e9:.2f} B parameters, batch {batch}, "
        f"KV {kv_type}; GB (tok+rt = tokenizer and runtime)",
    )
    for e in report["estimates"]:
        table.add_row(
            e["type"],
            str(e["ctx"]),
            _gb(e["file_bytes"]),
            f"{e['bits_per_weight']:.2f}",
            _gb(e["weights"]),
            _gb(e["kv_cache"]),
            _gb(e["activations"]),
            _gb(e["tokenizer"] + e["runtime"]),
            f"[bold]{_gb(e['total'])}[/]",
        )
    console().print(table)
