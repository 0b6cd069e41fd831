"""`llamita search NAME "query"` and `llamita ask NAME "question"`: ranked chunks from a
collection, and answers from it that cite their numbered sources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.markup import escape

from llamita.cli.common import DeviceOption, DtypeOption, ModelOption, friendly_errors, start_up, stderr
from llamita.cli.index import DataDirOption, EmbeddingModelOption, short

if TYPE_CHECKING:
    from llamita.api.llm import LLM
    from llamita.rag.answer import AnswerPrompt
    from llamita.rag.collection import Collection

ModeOption = typer.Option(
    "hybrid",
    "--mode",
    help="hybrid (BM25 and embeddings fused by reciprocal "
    "rank fusion, the embeddings weighted by how well they "
    "find passages in this collection: `index show`), bm25 "
    "or dense.",
)
RerankOption = typer.Option(
    0,
    "--rerank",
    min=0,
    help="Re-order the first N chunks by how likely the model "
    "finds the question after each (one forward pass per chunk; 20 is a good "
    "start).",
)


def _collection(
    name: str, data_dir: Path | None, embedding_model: Path | None, mode: str, llm: LLM | None = None
) -> Collection:
    """The collection, with its embedder: --embedding-model if given, else `llm` when it is
    the model the collection was indexed with, else that model (not loaded at all for BM25)."""
    from llamita.rag.collection import Collection

    with start_up():
        from llamita.api.llm import LLM
        from llamita.rag.embedder import Embedder

    collection = Collection(name, data_dir=data_dir)
    if embedding_model is not None:
        with stderr.status("loading embedding model…"), start_up():
            collection.use_embedder(Embedder(LLM(embedding_model)))
    elif isinstance(llm, LLM) and str(llm.loaded.path) == collection.settings.get("embedding_model"):
        collection.use_embedder(Embedder(llm))  # one model for both: load it once
    elif mode != "bm25":
        with stderr.status("loading embedding model…"), start_up():
            collection.embedder  # noqa: B018 - loads it now, under the status line
    return collection


@friendly_errors
def search(
    name: str = typer.Argument(..., help="Collection name."),
    query: str = typer.Argument(..., help="What to look for."),
    top: int = typer.Option(5, "--top", "-k", min=1, help="How many chunks."),
    mode: str = ModeOption,
    rerank: int = RerankOption,
    as_json: bool = typer.Option(False, "--json", help="A JSON list of {text, source, location, score, ...}."),
    embedding_model: Optional[Path] = EmbeddingModelOption,
    data_dir: Optional[Path] = DataDirOption,
) -> None:
    """The chunks of collection NAME that best match QUERY, best first, with source and scores.

    Example: llamita search curso "cuantos parametros tiene llama 3.1"
    """
    collection = _collection(name, data_dir, embedding_model, "hybrid" if rerank else mode)
    hits = collection.search(query, top, mode=mode, rerank=rerank)
    if as_json:
        typer.echo(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
        return
    console = Console()
    for rank, h in enumerate(hits, start=1):
        where = f" — {escape(h.location)}" if h.location else ""
        ranks = f"bm25 #{h.bm25_rank or '-'}, dense #{h.dense_rank or '-'}"
        console.print(
            f"[bold]{rank}.[/] [cyan]{escape(short(h.source))}[/]{where}  [dim]score {h.score:.4f} ({ranks})[/]"
        )
        console.print(escape(h.text.strip()), soft_wrap=True)
        console.print()
    if not hits:
        stderr.print("no matches")


@friendly_errors
def ask(
    name: str = typer.Argument(..., help="Collection name."),
    question: str = typer.Argument(..., help="Your question."),
    top: int = typer.Option(5, "--top", "-k", min=1, help="How many chunks to retrieve into the prompt."),
    mode: str = ModeOption,
    rerank: int = RerankOption,
    language: Optional[str] = typer.Option(
        None, "--language", "-l", show_default=False, help="Prompt language: es or en. Default: the question's."
    ),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Most tokens in the answer."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy, the most likely answer."),
    explain: bool = typer.Option(
        False,
        "--explain",
        help="After the answer, how much of the model's attention "
        "(all layers and heads, per answer token) went to each source, and a heatmap "
        "of the answer by attention to the sources.",
    ),
    model: Optional[Path] = ModelOption,
    embedding_model: Optional[Path] = EmbeddingModelOption,
    dtype: str = DtypeOption,
    device: str = DeviceOption,
    data_dir: Optional[Path] = DataDirOption,
) -> None:
    """Answer QUESTION from collection NAME: the best chunks go into the prompt as numbered
    sources, the answer streams with citations [1], [2]…, and the sources are listed after it.

    Example: llamita ask curso "¿Qué contexto tiene Llama 3.1?"
    """
    with start_up():
        from llamita.api.llm import LLM
        from llamita.rag.answer import citations, prepare, stream_answer
        from llamita.sampling_params import SamplingParams

    with stderr.status("loading model…"), start_up():
        llm = LLM(model, dtype=dtype, device=device)
    collection = _collection(name, data_dir, embedding_model, mode, llm)
    prompt = prepare(
        collection, question, llm, top=top, mode=mode, language=language, answer_tokens=max_tokens, rerank=rerank
    )
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens)
    console = Console()
    text = ""
    answer_ids = []
    for piece in stream_answer(llm, prompt, params):
        text += piece.text
        if piece.token_id is not None:
            answer_ids.append(piece.token_id)
        console.print(piece.text, end="", markup=False, highlight=False, soft_wrap=True)
    console.print()
    console.print()
    console.print("[bold]Fuentes:[/]" if prompt.language == "es" else "[bold]Sources:[/]")
    for number, hit in enumerate(prompt.sources, start=1):
        where = f" — {hit.location}" if hit.location else ""
        console.print(f"[{number}] {short(hit.source)}{where}", markup=False, highlight=False, soft_wrap=True)
    if explain and answer_ids:
        _print_explanation(console, llm, prompt, answer_ids)
    cited, invalid = citations(text, len(prompt.sources))
    if invalid:
        stderr.print(
            f"[yellow]note:[/] the answer cites {', '.join(f'[{n}]' for n in invalid)}, which is not among the sources"
        )
    if prompt.sources and not cited:
        stderr.print("[yellow]note:[/] the answer cites none of the sources")


def _print_explanation(console: Console, llm: LLM, prompt: AnswerPrompt, answer_ids: list[int]) -> None:
    """A bar per source (its share of the answer's attention) and the answer shaded by the
    attention each token paid to the sources (darker: more)."""
    from rich.text import Text

    from llamita.rag.explain import explain

    with stderr.status("reading the attention maps…"):
        found = explain(llm, prompt, answer_ids)
    console.print()
    console.print("[bold]Attention of the answer to each source[/] (all layers and heads, mean over answer tokens):")
    for number, share in enumerate(found.shares, start=1):
        console.print(f"[{number}] {share * 100:5.1f}% {'█' * round(share * 50)}", markup=False, highlight=False)
    console.print(
        f"retrieved text {found.retrieved * 100:.1f}%, the rest (instructions, question, template, "
        f"the answer itself) {found.other * 100:.1f}%",
        highlight=False,
    )
    shaded = Text()
    per_token = found.per_token.sum(axis=1)
    top = max(float(per_token.max()), 1e-9)
    for piece, weight in zip(found.answer_pieces, per_token):
        level = int(255 - 160 * float(weight) / top)
        shaded.append(piece, style=f"black on rgb(255,{level},{level})")
    console.print(shaded, soft_wrap=True)
