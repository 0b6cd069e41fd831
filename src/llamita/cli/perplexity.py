"""`llamita perplexity`: how well a model predicts a text, comparable with llama.cpp's numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llamita.cli.common import DtypeOption, ModelOption, ThreadsOption, friendly_errors, stderr


@friendly_errors
def perplexity(
    file: Path = typer.Argument(..., help="UTF-8 text file to score.", show_default=False),
    model: Optional[Path] = ModelOption,
    ctx: int = typer.Option(
        512,
        "--ctx",
        "-c",
        help="Window size in tokens (even, at most the model's context). Each window is scored on its second half.",
    ),
    chunks: Optional[int] = typer.Option(
        None, "--chunks", help="Score at most this many windows. Default: all that fit.", show_default=False
    ),
    dtype: str = DtypeOption,
    threads: Optional[int] = ThreadsOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout instead of text."),
) -> None:
    """Perplexity of FILE: exp of the mean negative log-likelihood (nats per token) of its tokens.

    Measured as llama.cpp's llama-perplexity does: the text is cut into windows of --ctx tokens,
    each evaluated from an empty context, and only the tokens in the second half of each window
    are scored (--ctx/2 - 1 per window). The ± is one standard error. Lower is better; numbers
    compare only between runs with the same tokenizer, text and --ctx.

    Example: llamita perplexity book.txt --ctx 512 --chunks 20
    """
    from llamita.engine.loader import load_model, load_tokenizer
    from llamita.engine.threads import use_threads
    from llamita.jobs.perplexity import ChunkProgress, check_settings, perplexity_windows, read_text_file
    from llamita.jobs.perplexity import perplexity as measure

    check_settings(ctx, chunks)  # fail before the slow part; the model's context is checked later
    text = read_text_file(file)
    # A text too short for one window fails here, from the tokenizer alone (milliseconds), not
    # after the weights have loaded (tens of seconds for an 8B model).
    tokenizer = load_tokenizer(model)
    perplexity_windows(tokenizer.encode(text, add_bos=tokenizer.add_bos), ctx, None, chunks)
    use_threads(threads)
    with stderr.status("loading model…"):
        loaded = load_model(model, dtype=dtype)
    stderr.print(
        f"[dim]{loaded.display_name} · {loaded.dtype} · {loaded.device} · loaded in {loaded.load_seconds:.1f} s[/]"
    )

    progress = Progress(
        TextColumn("[bold]perplexity"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks · {task.fields[estimate]}"),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
    )
    task = progress.add_task("", total=None, estimate="…")

    def on_chunk(p: ChunkProgress) -> None:
        progress.update(
            task, completed=p.index + 1, total=p.n_chunks, estimate=f"{p.perplexity:.4f} ± {p.perplexity_stderr:.4f}"
        )

    with progress:
        result = measure(loaded.model, loaded.tokenizer, text, n_ctx=ctx, chunks=chunks, on_chunk=on_chunk)

    if as_json:
        # A standard error needs two scored tokens; JSON has no NaN, so it becomes null.
        fields = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in result.to_dict().items()}
        print(
            json.dumps(
                {
                    "file": str(file),
                    "model": str(loaded.path),
                    "dtype": str(loaded.dtype).removeprefix("torch."),
                    **fields,
                }
            )
        )
        return
    stderr.print(
        f"[dim]{result.text_tokens} tokens in the text · {result.seconds:.1f} s · "
        f"{result.n_chunks * result.n_ctx / result.seconds:.0f} tokens/s evaluated[/]"
    )
    print(
        f"perplexity: {result.perplexity:.4f} ± {result.perplexity_stderr:.4f} "
        f"({result.n_chunks} chunks of {result.n_ctx} tokens, {result.tokens_scored} tokens scored)"
    )
