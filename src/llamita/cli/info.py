"""`llamita info`: what is inside a model (a GGUF file or a folder), read from its metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from llamita.cli.common import ModelOption, console, friendly_errors


@friendly_errors
def info(
    model: Optional[Path] = ModelOption,
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Architecture, parameters, quantization, context length, tokenizer, chat template, file size."""
    from llamita.jobs.model_info import model_info

    data = model_info(model)
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    table = Table(title=data["name"] or Path(data["path"]).name, show_header=False)
    table.add_column(style="bold cyan")
    table.add_column()
    rows = [
        ("file", f"{data['path']}"),
        (
            "file size",
            f"{data['file_size_bytes'] / 2**20:,.1f} MiB "
            + (f"(GGUF v{data['gguf_version']})" if data["gguf_version"] else f"({data['format']} folder)"),
        ),
        ("architecture", data["architecture"]),
        ("parameters", f"{data['parameters'] / 1e6:,.1f} M"),
        (
            "quantization",
            f"{data['quantization']} · tensors: " + ", ".join(f"{n}×{t}" for t, n in data["tensor_types"].items()),
        ),
        ("context length", f"{data['context_length']:,} tokens"),
        ("layers / dim", f"{data['n_layers']} / {data['dim']}"),
        ("heads (query / kv) × dim", f"{data['n_heads']} / {data['n_kv_heads']} × {data['head_dim']}"),
        ("ffn dim", str(data["ffn_dim"])),
        ("vocab", f"{data['vocab_size']:,}"),
        ("rope", f"theta {data['rope_theta']:g}, scaling {data['rope_scaling']}"),
        ("tied embeddings", "yes" if data["tied_embeddings"] else "no"),
    ]
    tok = data["tokenizer"]
    rows.append(
        (
            "tokenizer",
            f"{tok['model']} (pre: {tok['pre'] or '-'}), {tok['tokens']:,} tokens, bos {tok['bos']}, eos {tok['eos']}",
        )
    )
    for k, v in rows:
        table.add_row(k, v)
    out = console()
    out.print(table)
    template = data["chat_template"]
    out.print("[bold cyan]chat template[/]" + ("" if template else ": none (ChatML is used)"))
    if template:
        out.print(template, markup=False, highlight=False)
