"""Glass-box commands: tokenize | next | lens | attention | embed | analogy | sample.

Each one parses its options, calls a view in `llamita.glass`, and shows the dict it returns as
a rich table, or as JSON with --json (the same dict; numpy arrays as lists).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from llamita.cli.common import DtypeOption, LoraOption, ModelOption, ThreadsOption, console, friendly_errors, stderr

RawOption = typer.Option(
    False,
    "--raw",
    help="Use the text as it is, without the chat template "
    "(default: it is a user message and the model is about to answer).",
)
JsonOption = typer.Option(False, "--json", help="Print the result as JSON instead of a table.")


def load(model: Path | None, dtype: str, lora: list[str] | None = None, threads: int | None = None) -> Any:
    """The LLM to look into, with `lora` applied (the views then show the model with them), on
    `threads` CPU threads (None: the default of engine/threads.py)."""
    from llamita.api.llm import LLM
    from llamita.engine.threads import use_threads

    use_threads(threads)
    with stderr.status("loading model…"):
        return LLM(model, dtype=dtype, lora=lora)


def print_json(data: dict[str, Any], drop: tuple[str, ...] = ()) -> None:
    def plain(x: Any) -> Any:
        return x.tolist() if hasattr(x, "tolist") else str(x)

    print(json.dumps({k: v for k, v in data.items() if k not in drop}, indent=2, ensure_ascii=False, default=plain))


def shown(piece: str) -> str:
    from llamita.glass.common import label

    return label(piece)


@friendly_errors
def tokenize(
    text: str = typer.Argument(..., help="The text to split into tokens."),
    compare: Optional[list[str]] = typer.Option(
        None, "--compare", "-c", help="Another text to set beside it (repeatable), e.g. the same sentence in English."
    ),
    model: Optional[Path] = ModelOption,
    as_json: bool = JsonOption,
) -> None:
    """Show how TEXT becomes tokens: each token's piece, id and length in bytes, and tokens per
    word. Bytes of a character split over two tokens show as \\xNN; ␣ marks a space.

    Example: llamita tokenize "El perro cruzó la calle" --compare "The dog crossed the street"
    """
    from llamita.engine.loader import load_tokenizer
    from llamita.glass.tokens import compare_view

    data = compare_view(load_tokenizer(model), [text, *(compare or [])])  # no weights needed
    if as_json:
        print_json(data)
        return
    views = data["texts"]
    if len(views) == 1:
        table = Table(title=f"{views[0]['n_tokens']} tokens")
        for col in ("#", "piece", "id", "bytes"):
            table.add_column(col, justify="left" if col == "piece" else "right")
        for t in views[0]["tokens"]:
            table.add_row(
                str(t["position"]),
                shown(t["piece"]),
                str(t["id"]),
                str(t["bytes"]) + ("" if t["whole_chars"] else " (part of a character)"),
            )
        console().print(table)
        console().print("tokens per word: " + ", ".join(f"{w['word']} {w['tokens']}" for w in views[0]["words"]))
    table = Table(title="cost of each text")
    for col in ("text", "tokens", "chars", "words", "tokens/word", "chars/token", "vs first"):
        table.add_column(col, justify="left" if col == "text" else "right")
    for v in views:
        table.add_row(
            v["text"],
            str(v["n_tokens"]),
            str(v["n_chars"]),
            str(v["n_words"]),
            f"{v['tokens_per_word']:.2f}",
            f"{v['chars_per_token']:.2f}",
            f"{v['relative_tokens']:.2f}x",
        )
    if len(views) > 1:
        for v in views:
            console().print(" | ".join(shown(t["piece"]) for t in v["tokens"]))
    console().print(table)


@friendly_errors
def next_token(
    prompt: str = typer.Argument(..., help="The prompt (a question, or text to continue with --raw)."),
    model: Optional[Path] = ModelOption,
    top: int = typer.Option(10, "--top", help="How many of the most likely tokens to show."),
    temperature: Optional[list[float]] = typer.Option(
        None,
        "--temperature",
        "-t",
        help="Temperature to show the distribution at (repeatable; "
        "0 = greedy). Default: 1, the model's own distribution.",
    ),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Also show it after keeping the K most likely tokens."),
    top_p: Optional[float] = typer.Option(
        None, "--top-p", help="Also show it after nucleus filtering: the smallest set with this total probability."
    ),
    min_p: Optional[float] = typer.Option(
        None, "--min-p", help="Also show it after dropping tokens below min_p x the top token's probability."
    ),
    raw: bool = RawOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Write a bar chart to this .png file."),
    dtype: str = DtypeOption,
    threads: Optional[int] = ThreadsOption,
    lora: Optional[list[str]] = LoraOption,
    as_json: bool = JsonOption,
) -> None:
    """The probability of each possible next token after PROMPT, at each temperature, and
    after the top-k / top-p / min-p filters (applied at temperature 1 before the temperature,
    as the sampler does). Probabilities are in % ; entropy in bits (and nats in --json):
    0 bits = certain, 1 bit = a coin toss.

    Example: llamita next "The capital of France is" --raw -t 0.5 -t 1 -t 2 --top-k 5
    """
    from llamita.glass.next_token import next_token_view

    temps = temperature or [1.0]
    data = next_token_view(
        load(model, dtype, lora, threads),
        prompt,
        raw=raw,
        temperatures=temps,
        top=top,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
    )
    if out is not None:
        from llamita.glass.plots import next_token_chart

        next_token_chart(data, out)
        stderr.print(f"[dim]chart written to {out}[/]")
    if as_json:
        print_json(data)
        return
    dists = data["distributions"]
    table = Table(title=f"next token after {data['prompt_tokens']} prompt tokens")
    table.add_column("#", justify="right")
    table.add_column("token")
    table.add_column("id", justify="right")
    table.add_column("logit", justify="right")
    for d in dists:
        table.add_column(f"T={d['temperature']:g}" + ("\nfiltered" if d["filtered"] else ""), justify="right")
    for i, t in enumerate(data["tokens"]):
        table.add_row(
            str(t["rank"]),
            shown(t["piece"]),
            str(t["id"]),
            f"{t['logit']:.2f}",
            *(f"{100 * d['probs'][i]:.2f}%" for d in dists),
        )
    table.add_section()
    table.add_row("", "entropy (bits)", "", "", *(f"{d['entropy_bits']:.2f}" for d in dists))
    table.add_row("", "tokens with p > 0", "", "", *(f"{d['candidates']:,}" for d in dists))
    console().print(table)
    if data["filter"]:
        f = data["filter"]
        console().print(f"[dim]filter: top_k {f['top_k'] or 'off'}, top_p {f['top_p']:g}, min_p {f['min_p']:g}[/]")


@friendly_errors
def lens(
    prompt: str = typer.Argument(..., help="The prompt (a question, or text to continue with --raw)."),
    model: Optional[Path] = ModelOption,
    top: int = typer.Option(1, "--top", help="Tokens to show per layer."),
    raw: bool = RawOption,
    dtype: str = DtypeOption,
    threads: Optional[int] = ThreadsOption,
    lora: Optional[list[str]] = LoraOption,
    as_json: bool = JsonOption,
) -> None:
    """Logit lens: the token each layer would predict next if the model stopped there (its
    residual stream at the last position through the final norm and the output projection).
    Layer 0 is the input embedding; probabilities in %.

    Example: llamita lens "The capital of France is" --raw
    """
    from llamita.glass.lens import logit_lens

    data = logit_lens(load(model, dtype, lora, threads), prompt, raw=raw, top=top)
    if as_json:
        print_json(data)
        return
    final = shown(data["prediction"]["piece"])
    table = Table(title=f"logit lens · the model predicts {final!r}")
    for col in ("layer", "top token", "p", f"p({final})", f"rank of {final}"):
        table.add_column(col, justify="left" if col == "top token" else "right")
    for row in data["layers"]:
        table.add_row(
            "emb" if row["layer"] == 0 else str(row["layer"]),
            " · ".join(shown(t["piece"]) for t in row["top"]),
            " · ".join(f"{100 * t['prob']:.1f}%" for t in row["top"]),
            f"{100 * row['final_token_prob']:.1f}%",
            str(row["final_token_rank"]),
        )
    console().print(table)


@friendly_errors
def attention(
    text: str = typer.Argument(..., help="The text whose attention to show."),
    model: Optional[Path] = ModelOption,
    layer: Optional[int] = typer.Option(
        None, "--layer", "-l", help="Layer, from 0. Default: the average of all layers."
    ),
    head: Optional[int] = typer.Option(None, "--head", help="Query head, from 0. Default: the average of all heads."),
    token: str = typer.Option(
        "-1",
        "--token",
        "-i",
        help="The token to explain: a position (negative from the end) or a word. Default: the last token.",
    ),
    to: Optional[str] = typer.Option(
        None, "--to", help="A position or word: list the layers/heads where --token attends most to it."
    ),
    top: int = typer.Option(5, "--top", help="How many tokens (and heads) to list."),
    raw: bool = RawOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Write the attention heatmap to this .png file."),
    dtype: str = DtypeOption,
    threads: Optional[int] = ThreadsOption,
    lora: Optional[list[str]] = LoraOption,
    as_json: bool = JsonOption,
) -> None:
    """Attention weights of the real forward pass: how much each token draws from each earlier
    token (each row sums to 1), for one layer and head or averaged; the tokens --token attends
    to most; with --to, the heads that link the two.

    Example: llamita attention "El perro que persiguió al gato cruzó la calle" --raw --token cruzó --to perro
    """
    from llamita.glass.attention import attention_view

    data = attention_view(
        load(model, dtype, lora, threads), text, raw=raw, layer=layer, head=head, token=token, to=to, top=top
    )
    if out is not None:
        from llamita.glass.plots import attention_heatmap

        attention_heatmap(data, out)
        stderr.print(f"[dim]heatmap written to {out}[/]")
    if as_json:
        print_json(data, drop=("weights",))
        return
    where = (
        ("all layers" if layer is None else f"layer {layer}") + ", " + ("all heads" if head is None else f"head {head}")
    )
    q = data["token"]
    table = Table(title=f"{shown(q['piece'])!r} (position {q['position']}) attends to · {where}")
    for col in ("position", "token", "weight"):
        table.add_column(col, justify="left" if col == "token" else "right")
    for a in data["attends_to"]:
        table.add_row(str(a["position"]), shown(a["piece"]), f"{a['weight']:.3f}")
    console().print(table)
    if "heads_to" in data:
        target = "".join(data["to"]["pieces"])
        table = Table(
            title=f"heads where {shown(q['piece'])!r} attends most to {shown(target)!r} "
            f"(mean over all heads {data['to']['mean_weight']:.3f})"
        )
        for col in ("layer", "head", "weight"):
            table.add_column(col, justify="right")
        for h in data["heads_to"]:
            table.add_row(str(h["layer"]), str(h["head"]), f"{h['weight']:.3f}")
        console().print(table)


@friendly_errors
def embed(
    texts: list[str] = typer.Argument(..., help="Texts to embed (two or more to compare)."),
    model: Optional[Path] = ModelOption,
    dtype: str = DtypeOption,
    threads: Optional[int] = ThreadsOption,
    as_json: bool = JsonOption,
) -> None:
    """Embed each text (mean of the model's final hidden states, unit length) and show the
    cosine similarity of every pair: 1 = same direction, 0 = unrelated.

    Example: llamita embed "I love dogs" "I really like dogs" "Taxes are due in April"
    """
    from llamita.glass.embeddings import embed_view

    data = embed_view(load(model, dtype, threads=threads), texts)
    if as_json:
        print_json(data)
        return
    table = Table(title=f"cosine similarity ({data['embeddings'].shape[1]}-dimensional embeddings)")
    table.add_column("")
    for i in range(len(texts)):
        table.add_column(str(i + 1), justify="right")
    for i, (text, row) in enumerate(zip(texts, data["similarity"])):
        table.add_row(f"{i + 1}. {text}", *(f"{s:.3f}" for s in row))
    console().print(table)


@friendly_errors
def analogy(
    a: str = typer.Argument(..., help="A, e.g. king"),
    b: str = typer.Argument(..., help="B, e.g. man"),
    c: str = typer.Argument(..., help="C, e.g. woman"),
    model: Optional[Path] = ModelOption,
    top: int = typer.Option(5, "--top", help="How many answers to list."),
    expect: Optional[str] = typer.Option(None, "--expect", help="The answer you expect (e.g. queen): report its rank."),
    dtype: str = DtypeOption,
    threads: Optional[int] = ThreadsOption,
    as_json: bool = JsonOption,
) -> None:
    """A − B + C in the model's input token-embedding table, answered by the nearest tokens by
    cosine (A, B, C excluded). Words are looked up as they appear after a space; a word of
    several tokens is the mean of their embeddings, and the answer is a single token.

    Example: llamita analogy king man woman --expect queen
    """
    from llamita.glass.embeddings import analogy_view

    data = analogy_view(load(model, dtype, threads=threads), a, b, c, top=top, expect=expect)
    if as_json:
        print_json(data)
        return
    for w in data["words"].values():
        if w["multi_token"]:
            console().print(
                f"[yellow]note:[/] {w['word']!r} is {len(w['ids'])} tokens "
                f"({' | '.join(shown(p) for p in w['pieces'])}); using the mean of their embeddings"
            )
    table = Table(title=f"{a} − {b} + {c} ≈")
    for col in ("#", "token", "cosine"):
        table.add_column(col, justify="left" if col == "token" else "right")
    for i, ans in enumerate(data["answers"]):
        table.add_row(str(i + 1), shown(ans["piece"]), f"{ans['cosine']:.3f}")
    console().print(table)
    if "expect" in data:
        e = data["expect"]
        if e["rank"] is None:
            console().print(f"{expect!r} is one of A, B, C: it cannot be the answer.")
        else:
            what = (
                repr(expect)
                if not e["multi_token"]
                else f"{expect!r} ({len(e['ids'])} tokens; its first, {shown(e['pieces'][0])!r},)"
            )
            verdict = "it worked" if e["rank"] <= top else "it did not work"
            helped = "better" if e["rank"] < e["rank_from_c_alone"] else "no better"
            console().print(
                f"{what} ranks #{e['rank']:,} of {e['out_of']:,} tokens: {verdict} "
                f"(#{e['rank_from_c_alone']:,} by similarity to {c!r} alone: A − B made it {helped})."
            )


@friendly_errors
def sample(
    prompt: str = typer.Argument(..., help="The prompt (a question, or text to continue with --raw)."),
    model: Optional[Path] = ModelOption,
    n: int = typer.Option(5, "--n", help="Samples per temperature."),
    temperature: Optional[list[float]] = typer.Option(
        None, "--temperature", "-t", help="Temperature (repeatable). Default: 0.1 and 1.5."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed: sample j uses seed + j, so the run repeats."),
    max_tokens: int = typer.Option(40, "--max-tokens", help="Most tokens per sample."),
    raw: bool = RawOption,
    dtype: str = DtypeOption,
    threads: Optional[int] = ThreadsOption,
    lora: Optional[list[str]] = LoraOption,
    as_json: bool = JsonOption,
) -> None:
    """Sample PROMPT several times at each temperature (no top-k/top-p/min-p, so only the
    temperature shapes the draw) and measure how much the samples differ: distinct-1/2 = share
    of unique tokens / token pairs (1 = nothing repeats), overlap = mean Jaccard similarity of
    the samples' token sets (1 = all alike).

    Example: llamita sample "Write a one-line story about a cat." --n 5 -t 0.1 -t 1.5 --seed 1
    """
    from llamita.glass.variability import sample_view

    data = sample_view(
        load(model, dtype, lora, threads),
        prompt,
        temperatures=temperature or [0.1, 1.5],
        n=n,
        seed=seed,
        max_tokens=max_tokens,
        raw=raw,
    )
    if as_json:
        print_json(data)
        return
    for run in data["runs"]:
        console().print(f"[bold]T = {run['temperature']:g}[/]")
        for i, s in enumerate(run["samples"]):
            console().print(f"  {i + 1}. " + s["text"].strip().replace("\n", " ⏎ "), markup=False)
    table = Table(title="variability per temperature")
    for col in ("temperature", "distinct-1", "distinct-2", "overlap (Jaccard)"):
        table.add_column(col, justify="right")
    for run in data["runs"]:
        j = run["mean_jaccard"]
        table.add_row(
            f"{run['temperature']:g}",
            f"{run['distinct_1']:.3f}",
            f"{run['distinct_2']:.3f}",
            "-" if j is None else f"{j:.3f}",
        )
    console().print(table)
