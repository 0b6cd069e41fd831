"""Bringing a collection up to date with files on disk: new and changed files (by SHA-256 of
their bytes) are read, chunked, embedded and stored, each in its own transaction; files that
disappeared from under the given paths are dropped; unchanged files are not touched; a file
that cannot be read is reported by name and skipped."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llamita.errors import DocumentError
from llamita.rag.chunker import Chunk, chunk_blocks
from llamita.rag.embedder import Embedder
from llamita.rag.readers import find_documents, read_blocks
from llamita.rag.store import CollectionStore


@dataclass
class IndexReport:
    """What one `add` did, by absolute path."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    chunks: int = 0  # chunks written
    seconds: float = 0.0


EMBED_GROUP = 8  # chunks embedded between two progress reports
# on_progress(files done, files in total, the file being read, chunks embedded so far)
ProgressCallback = Callable[[int, int, str, int], None]


def embedding_input(chunk: Chunk) -> str:
    """What a chunk's vector is computed from: its heading path, then its text, so a chunk
    deep in a section still carries the section's subject."""
    return f"{chunk.heading}\n{chunk.text}" if chunk.heading else chunk.text


def _under(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(str(root) + os.sep)


def index_paths(
    store: CollectionStore,
    embedder: Embedder,
    paths: Sequence[str | os.PathLike[str]],
    *,
    budget: int,
    overlap: int,
    on_progress: ProgressCallback | None = None,
) -> IndexReport:
    """Indexes `paths` (files and folders) into `store`; see the module docstring."""
    start = time.perf_counter()
    report = IndexReport()
    roots = [Path(p).expanduser().resolve() for p in paths]
    # A path that does not exist is reported; its files, if any were indexed, are dropped below.
    report.skipped.extend((str(r), "no such file or folder") for r in roots if not r.exists())
    documents = list(find_documents(r for r in roots if r.exists()))
    known = {f["path"]: f for f in store.files()}
    present = {str(d) for d in documents}
    gone = [p for p in known if p not in present and any(_under(p, r) for r in roots)]
    if gone:
        store.remove_files(gone)
        report.removed.extend(gone)
    for done, document in enumerate(documents):
        path = str(document)
        if on_progress:
            on_progress(done, len(documents), path, report.chunks)
        try:
            data = document.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if path in known and known[path]["sha256"] == digest:
                report.unchanged.append(path)
                continue
            chunks = chunk_blocks(read_blocks(document, data), embedder.count_tokens, budget=budget, overlap=overlap)
        except OSError as e:
            report.skipped.append((path, e.strerror or str(e)))
            continue
        except DocumentError as e:
            report.skipped.append((path, e.reason))
            continue
        texts = [embedding_input(c) for c in chunks]
        parts = []
        for start_at in range(0, len(texts), EMBED_GROUP):  # report progress inside a long file too
            parts.append(embedder.embed_documents(texts[start_at : start_at + EMBED_GROUP]))
            if on_progress:
                on_progress(done, len(documents), path, report.chunks + start_at + len(parts[-1]))
        vectors = np.concatenate(parts) if parts else embedder.embed_documents([])
        store.put_file(path, digest, len(data), chunks, vectors)
        (report.updated if path in known else report.added).append(path)
        report.chunks += len(chunks)
    if on_progress:
        on_progress(len(documents), len(documents), "", report.chunks)
    report.seconds = time.perf_counter() - start
    return report
