"""`llamita index add | list | show | rm`: document collections for `llamita search` and
`llamita ask`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llamita.cli.common import friendly_errors, start_up, stderr

app = typer.Typer(
    name="index", no_args_is_help=True, help="Document collections: index files for `llamita search` and `llamita ask`."
)
DATA_DIR_HELP = (
    "Folder holding collections/NAME.db. Default: $XDG_DATA_HOME/llamita "
    "(~/.local/share/llamita), beside the web chat's llamita.db."
)
DataDirOption = typer.Option(None, "--data-dir", help=DATA_DIR_HELP, show_default=False)
EmbeddingModelOption = typer.Option(
    None,
    "--embedding-model",
    "-e",
    show_default=False,
    help="GGUF (or HF folder) whose embeddings index the collection. Default: the embedded "
    "SmolLM2-135M-Instruct. Fixed when the collection is created; search and ask reuse it.",
)


def short(path: str) -> str:
    """A path relative to the current folder when it lies below it."""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:  # another drive on Windows
        return path


@app.command("add")
@friendly_errors
def add(
    name: str = typer.Argument(..., help="Collection name (created if new)."),
    paths: list[Path] = typer.Argument(..., help="Files and folders: .txt .md .html .pdf .docx."),
    embedding_model: Optional[Path] = EmbeddingModelOption,
    query_prefix: str = typer.Option(
        "",
        "--query-prefix",
        help="Text the embedding model expects before a query (e.g. 'query: '); recorded with a new collection.",
    ),
    document_prefix: str = typer.Option(
        "",
        "--document-prefix",
        help="Text the embedding model expects before a passage (e.g. 'passage: '); recorded with a new collection.",
    ),
    chunk_tokens: Optional[int] = typer.Option(
        None, "--chunk-tokens", show_default=False, help="Most tokens in a chunk (default 256; fixed at creation)."
    ),
    chunk_overlap: Optional[int] = typer.Option(
        None, "--chunk-overlap", show_default=False, help="Tokens a chunk repeats from the one before (default 32)."
    ),
    data_dir: Optional[Path] = DataDirOption,
) -> None:
    """Index files and folders into collection NAME. Re-run it after editing files: only what
    changed is re-indexed, and files deleted from under PATHS are dropped.

    Example: llamita index add curso ~/cursos/llama/
    """
    from llamita.rag.collection import Collection
    from llamita.rag.store import collection_path

    with start_up():
        from llamita.api.llm import LLM
        from llamita.rag.embedder import Embedder, EmbeddingSpec, declared_pooling

    create = not collection_path(name, data_dir).exists()
    collection = Collection(name, data_dir=data_dir, create=True)
    if embedding_model is not None or create:
        with stderr.status("loading embedding model…"), start_up():
            llm = LLM(embedding_model)
        spec = EmbeddingSpec(declared_pooling(llm), query_prefix, document_prefix) if create else None
        collection.use_embedder(Embedder(llm, spec) if spec else Embedder(llm))
    elif query_prefix or document_prefix:
        stderr.print("[yellow]note:[/] --query-prefix/--document-prefix apply only to a new collection")
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[chunks]} chunks"),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    ) as progress:
        task = progress.add_task("scanning", total=None, chunks=0)

        def on_progress(done: int, total: int, path: str, chunks: int) -> None:
            progress.update(
                task, total=total, completed=done, chunks=chunks, description=os.path.basename(path) or "done"
            )

        report = collection.add(paths, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, on_progress=on_progress)
    for path, why in report.skipped:
        stderr.print(f"[yellow]skipped[/] {short(path)}: {why}", soft_wrap=True)
    files, chunks, _ = collection.store.counts()
    stderr.print(
        f"{name}: {len(report.added)} added, {len(report.updated)} updated, {len(report.removed)} removed, "
        f"{len(report.unchanged)} unchanged, {len(report.skipped)} skipped; {report.chunks} chunks "
        f"indexed in {report.seconds:.1f} s. Now {files} files, {chunks} chunks."
    )


@app.command("list")
@friendly_errors
def list_(data_dir: Optional[Path] = DataDirOption) -> None:
    """The collections, with their files, chunks and embedding model."""
    from llamita.rag.store import CollectionStore, collection_path, list_collections

    names = list_collections(data_dir)
    if not names:
        stderr.print("no collections yet: create one with `llamita index add NAME FILES...`")
        return
    table = Table("name", "files", "chunks", "tokens", "embedding model")
    for name in names:
        store = CollectionStore(collection_path(name, data_dir))
        files, chunks, tokens = store.counts()
        table.add_row(name, str(files), str(chunks), str(tokens), store.meta().get("embedding_name", "-"))
    Console().print(table)


@app.command("show")
@friendly_errors
def show(name: str = typer.Argument(..., help="Collection name."), data_dir: Optional[Path] = DataDirOption) -> None:
    """A collection's settings and its files."""
    from llamita.rag.store import CollectionStore, collection_path

    store = CollectionStore(collection_path(name, data_dir))
    meta = store.meta()
    console = Console()
    console.print(f"[bold]{name}[/]  {store.path}", soft_wrap=True)
    for key in (
        "embedding_model",
        "pooling",
        "query_prefix",
        "document_prefix",
        "chunk_tokens",
        "chunk_overlap",
        "dense_weight",
        "dense_weight_measure",
    ):
        if key in meta:
            console.print(f"  {key}: {meta[key]!r}" if "prefix" in key else f"  {key}: {meta[key]}")
    table = Table("chunks", "bytes", "sha256")
    table.add_column("file", overflow="fold")  # whole paths, wrapped, never cut
    for f in store.files():
        table.add_row(str(f["n_chunks"]), str(f["size"]), f["sha256"][:12], short(f["path"]))
    console.print(table)


@app.command("rm")
@friendly_errors
def rm(name: str = typer.Argument(..., help="Collection name."), data_dir: Optional[Path] = DataDirOption) -> None:
    """Delete a collection (its index only; your files are not touched)."""
    from llamita.errors import CollectionError
    from llamita.rag.store import delete_collection

    if not delete_collection(name, data_dir):
        raise CollectionError(f"there is no collection '{name}'")
    stderr.print(f"deleted collection {name}")
