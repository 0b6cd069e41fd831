"""`llamita quantize`: write a model as another GGUF type, with progress and a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llamita.cli.common import console, friendly_errors, stderr

if TYPE_CHECKING:
    from llamita.jobs.quantize import TensorPlan

TYPE_HELP = (
    "Target type. Whole-file formats: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q6_K. "
    "Mixes that give sensitive tensors more bits, as llama.cpp's llama-quantize does: Q2_K, "
    "Q3_K_M, Q4_K_M (the usual choice), Q5_K_M."
)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


@friendly_errors
def quantize(
    input_path: Path = typer.Argument(..., metavar="INPUT", show_default=False, help="Model to read: a .gguf file."),
    output_path: Path = typer.Argument(
        ..., metavar="OUTPUT", show_default=False, help="GGUF file to write (replaced if it exists)."
    ),
    type_name: str = typer.Option(..., "--type", "-t", help=TYPE_HELP, show_default=False),
    allow_requantize: bool = typer.Option(
        False,
        "--allow-requantize",
        help="Allow re-encoding tensors that are already quantized (quality is lost twice).",
    ),
) -> None:
    """Re-encode a model's weights into another GGUF type (metadata, tokenizer and chat
    template are copied unchanged). Norms and 1-D tensors keep their type."""
    from llamita.jobs.quantize import quantize_model

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    ) as progress:
        task = progress.add_task("quantizing", total=None)

        def on_tensor(p: TensorPlan, i: int, n: int) -> None:
            progress.update(task, total=n, completed=i + 1, description=f"{p.name} → {p.target_type.name}")

        report = quantize_model(
            input_path, output_path, type_name, allow_requantize=allow_requantize, on_tensor=on_tensor
        )
    if report.requantized:
        stderr.print(
            f"[yellow]warning:[/] re-quantized {len(report.requantized)} tensors that were "
            "already quantized: quality is lost twice; prefer an F16/BF16/F32 source"
        )

    kind = report.file_type.name if report.file_type else "source types"
    table = Table(title=f"{report.output_path.name} ({kind})")
    for col in ("type", "tensors", "weights", "bits/weight", "size"):
        table.add_column(col, justify="left" if col == "type" else "right")
    for t, count, weights, nbytes in report.by_type():
        table.add_row(t.name, str(count), f"{weights / 1e6:,.2f} M", f"{8 * nbytes / weights:.2f}", _mib(nbytes))
    table.add_section()
    table.add_row(
        "all",
        str(len(report.tensors)),
        f"{report.n_weights / 1e6:,.2f} M",
        f"{report.bits_per_weight:.2f}",
        _mib(report.output_bytes),
    )
    out = console(to_stderr=True)
    out.print(table)
    ratio = report.output_bytes / report.input_bytes
    out.print(
        f"file size {_mib(report.input_bytes)} → {_mib(report.output_bytes)} "
        f"({ratio:.2f}×) in {report.seconds:.1f} s: {report.output_path}"
    )
