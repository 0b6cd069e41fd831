"""`llamita perplexity`: how well a model predicts a text, and how far a model's predictions
are from a base's (KL divergence), comparable with llama.cpp's numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llamita.cli.common import DtypeOption, ModelOption, ThreadsOption, friendly_errors, stderr
from llamita.errors import InvalidParameterError

DEFAULT_CTX = 512


@friendly_errors
def perplexity(
    file: Optional[Path] = typer.Argument(
        None,
        help="UTF-8 text file to score. Not needed with --kl-divergence (the base file holds the tokens).",
        show_default=False,
    ),
    model: Optional[Path] = ModelOption,
    ctx: Optional[int] = typer.Option(
        None,
        "--ctx",
        "-c",
        help="Window size in tokens (even, at most the model's context). Each window is scored on its "
        f"second half. Default: {DEFAULT_CTX}; with --kl-divergence, the base file's.",
        show_default=False,
    ),
    chunks: Optional[int] = typer.Option(
        None, "--chunks", help="Score at most this many windows. Default: all that fit.", show_default=False
    ),
    kl_divergence_base: Optional[Path] = typer.Option(
        None,
        "--kl-divergence-base",
        help="Alone: also save this model's log-probabilities at every scored token to this file "
        "(llama.cpp's format, 2 bytes × vocab size a scored token). With --kl-divergence: the base to "
        "compare against (written by llamita or by llama-perplexity).",
        show_default=False,
    ),
    kl_divergence: bool = typer.Option(
        False,
        "--kl-divergence",
        help="Measure the KL divergence (nats per token) of this model's next-token distributions from "
        "the base in --kl-divergence-base, over the base's tokens and windows.",
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

    KL divergence, as llama-perplexity --kl-divergence measures it: first save a base (e.g. the
    same model in float32), then run the model under test against it.

    Example: llamita perplexity book.txt --ctx 512 --chunks 20

    Example: llamita perplexity book.txt --dtype float32 --kl-divergence-base base.kld
             llamita perplexity --kl-divergence-base base.kld --kl-divergence
    """
    from llamita.engine.loader import load_tokenizer
    from llamita.jobs.log_probs_file import read_header
    from llamita.jobs.perplexity import check_settings, perplexity_windows, read_text_file

    if kl_divergence:
        if kl_divergence_base is None:
            raise InvalidParameterError(
                "kl_divergence", "needs --kl-divergence-base FILE: the base's log-probabilities to compare against"
            )
        header = read_header(kl_divergence_base)  # a bad base fails before the model loads
        if ctx is not None and ctx != header.n_ctx:
            raise InvalidParameterError(
                "ctx", f"the base was written with windows of {header.n_ctx} tokens; leave --ctx out or give that"
            )
        check_settings(header.n_ctx, chunks)
        if file is not None:  # optional: proves the base was made from this text
            tokenizer = load_tokenizer(model)
            tokens = tokenizer.encode(read_text_file(file), add_bos=tokenizer.add_bos)
            if tokens[: len(header.tokens)] != header.tokens:
                raise InvalidParameterError(
                    "file", f"{file} does not tokenize to the tokens the base {kl_divergence_base} was made from"
                )
        _measure_kl_divergence(model, kl_divergence_base, chunks, dtype, threads, as_json)
        return

    if file is None:
        raise InvalidParameterError("file", "give a text file to score (or --kl-divergence with a base file)")
    ctx = DEFAULT_CTX if ctx is None else ctx
    check_settings(ctx, chunks)  # fail before the slow part; the model's context is checked later
    text = read_text_file(file)
    # A text too short for one window fails here, from the tokenizer alone (milliseconds), not
    # after the weights have loaded (tens of seconds for an 8B model).
    tokenizer = load_tokenizer(model)
    perplexity_windows(tokenizer.encode(text, add_bos=tokenizer.add_bos), ctx, None, chunks)
    _measure_perplexity(model, file, text, ctx, chunks, kl_divergence_base, dtype, threads, as_json)


def _load(model: Optional[Path], dtype: str, threads: Optional[int]) -> Any:
    from llamita.engine.loader import kernel_summary, load_model
    from llamita.engine.threads import use_threads

    use_threads(threads)
    with stderr.status("loading model…"):
        loaded = load_model(model, dtype=dtype)
    weights = f"compact weights · {kernel_summary()}" if loaded.compact else "dense weights"
    stderr.print(
        f"[dim]{loaded.display_name} · {loaded.dtype} · {weights} · {loaded.device} · "
        f"loaded in {loaded.load_seconds:.1f} s[/]"
    )
    return loaded


def _progress(label: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks · {task.fields[estimate]}"),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
    )


def _json_fields(fields: dict[str, Any]) -> dict[str, Any]:
    # A standard error needs two scored tokens; JSON has no NaN, so it becomes null.
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in fields.items()}


def _measure_perplexity(
    model: Optional[Path],
    file: Path,
    text: str,
    ctx: int,
    chunks: Optional[int],
    kl_divergence_base: Optional[Path],
    dtype: str,
    threads: Optional[int],
    as_json: bool,
) -> None:
    from llamita.jobs.perplexity import ChunkProgress
    from llamita.jobs.perplexity import perplexity as measure

    loaded = _load(model, dtype, threads)
    progress = _progress("perplexity")
    task = progress.add_task("", total=None, estimate="…")

    def on_chunk(p: ChunkProgress) -> None:
        progress.update(
            task, completed=p.index + 1, total=p.n_chunks, estimate=f"{p.perplexity:.4f} ± {p.perplexity_stderr:.4f}"
        )

    with progress:
        result = measure(
            loaded.model,
            loaded.tokenizer,
            text,
            n_ctx=ctx,
            chunks=chunks,
            on_chunk=on_chunk,
            kl_divergence_base=kl_divergence_base,
        )

    if as_json:
        base = {"kl_divergence_base": str(kl_divergence_base)} if kl_divergence_base else {}
        out = {"file": str(file), "model": str(loaded.path), "dtype": str(loaded.dtype).removeprefix("torch.")}
        print(json.dumps({**out, **base, **_json_fields(result.to_dict())}))
        return
    stderr.print(
        f"[dim]{result.text_tokens} tokens in the text · {result.seconds:.1f} s · "
        f"{result.n_chunks * result.n_ctx / result.seconds:.0f} tokens/s evaluated[/]"
    )
    if kl_divergence_base:
        stderr.print(f"[dim]base log-probabilities saved to {kl_divergence_base}[/]")
    print(
        f"perplexity: {result.perplexity:.4f} ± {result.perplexity_stderr:.4f} "
        f"({result.n_chunks} chunks of {result.n_ctx} tokens, {result.tokens_scored} tokens scored)"
    )


def _measure_kl_divergence(
    model: Optional[Path], base: Path, chunks: Optional[int], dtype: str, threads: Optional[int], as_json: bool
) -> None:
    from llamita.jobs.kl_divergence import KLD_PERCENTILES, KLDivergenceProgress, kl_divergence

    loaded = _load(model, dtype, threads)
    progress = _progress("KL divergence")
    task = progress.add_task("", total=None, estimate="…")

    def on_chunk(p: KLDivergenceProgress) -> None:
        progress.update(
            task,
            completed=p.index + 1,
            total=p.n_chunks,
            estimate=f"KLD {p.mean_kld:.6f} ± {p.mean_kld_stderr:.6f} · same top {100 * p.same_top_p:.2f} %",
        )

    with progress:
        r = kl_divergence(loaded.model, loaded.tokenizer, base, chunks=chunks, on_chunk=on_chunk)

    if as_json:
        out = {"kl_divergence_base": str(base), "model": str(loaded.path)}
        out["dtype"] = str(loaded.dtype).removeprefix("torch.")
        print(json.dumps({**out, "compact": loaded.compact, **_json_fields(r.to_dict())}))
        return
    stderr.print(
        f"[dim]{r.n_chunks} chunks of {r.n_ctx} tokens, {r.tokens_scored} tokens scored · {r.seconds:.1f} s[/]"
    )
    lines = [
        f"Mean PPL(Q)              : {r.perplexity:10.6f} ± {r.perplexity_stderr:10.6f}",
        f"Mean PPL(base)           : {r.perplexity_base:10.6f} ± {r.perplexity_base_stderr:10.6f}",
        f"Mean ln(PPL(Q)/PPL(base)): {r.log_ppl_ratio:10.6f} ± {r.log_ppl_ratio_stderr:10.6f}",
        f"Mean    KLD: {r.mean_kld:10.6f} ± {r.mean_kld_stderr:10.6f}",
    ]
    names = {"kld_max": "Maximum", "kld_median": "Median ", "kld_min": "Minimum"}
    for name, fraction in KLD_PERCENTILES:
        label = names.get(name) or f"{100 * fraction:4.1f}%  "
        lines.append(f"{label} KLD: {getattr(r, name):10.6f}")
    lines += [
        f"Mean    Δp: {100 * r.mean_p_diff:6.3f} ± {100 * r.mean_p_diff_stderr:5.3f} %",
        f"RMS Δp    : {100 * r.rms_p_diff:6.3f} ± {100 * r.rms_p_diff_stderr:5.3f} %",
        f"Same top p: {100 * r.same_top_p:6.3f} ± {100 * r.same_top_p_stderr:5.3f} %",
    ]
    print("\n".join(lines))
