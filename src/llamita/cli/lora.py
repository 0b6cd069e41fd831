"""`llamita lora merge`: fold LoRA adapters into a base model and write a new GGUF file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llamita.cli.common import friendly_errors, stderr

if TYPE_CHECKING:
    from llamita.jobs.quantize import TensorPlan

app = typer.Typer(
    name="lora",
    help="LoRA adapters: merge them into a model (apply them unmerged with --lora on run, chat and serve).",
    no_args_is_help=True,
)


@app.command("merge")
@friendly_errors
def merge(
    model: Path = typer.Option(..., "--model", "-m", show_default=False, help="Base model: a .gguf file."),
    lora: list[str] = typer.Option(
        ...,
        "--lora",
        show_default=False,
        help="Adapter to merge, PATH[:SCALE]: a PEFT folder or a GGUF LoRA file; "
        "SCALE multiplies its alpha/r (default 1). Repeatable: the updates add up.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", show_default=False, help="GGUF file to write (replaced if it exists)."
    ),
    type_name: str = typer.Option(
        "keep",
        "--type",
        "-t",
        help="Tensor types of the output: 'keep' gives every tensor the base's "
        "type (merged matrices re-encoded in it), or a `llamita quantize` "
        "type for the whole file: F32, F16, BF16, Q8_0, Q4_K_M ...",
    ),
) -> None:
    """Write MODEL with the adapters added to its weights (W + scale·B·A) as one GGUF file that
    runs anywhere a GGUF runs, at the base model's speed. Metadata, tokenizer and chat template
    are copied unchanged.

    Example: llamita lora merge --model base.gguf --lora my-adapter/ --out merged.gguf --type Q8_0
    """
    from llamita.jobs.lora_merge import merge_lora

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    ) as progress:
        task = progress.add_task("merging", total=None)

        def on_tensor(p: TensorPlan, i: int, n: int) -> None:
            progress.update(task, total=n, completed=i + 1, description=f"{p.name} → {p.target_type.name}")

        report = merge_lora(model, lora, out, type_name, on_tensor=on_tensor)
    kind = report.file_type.name if report.file_type else "types of the base"
    stderr.print(
        f"merged {len(lora)} adapter(s) into {report.output_path} ({kind}, "
        f"{report.output_bytes / 2**20:,.1f} MiB) in {report.seconds:.1f} s"
    )
