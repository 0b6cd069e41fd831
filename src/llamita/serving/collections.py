"""Document collections on the server: where they live, which embedder each one uses, uploads,
and the retrieval a chat request asks for with "collections".

Collections live in `DATA_DIR/collections/NAME.db`, DATA_DIR being the server's `--data-dir`
(default $XDG_DATA_HOME/llamita, the folder `llamita index` uses too, so the CLI's collections
are the server's). Uploaded files are kept beside it, in `collections/NAME.files/`, because a
collection re-indexes from files on disk.

The model is only ever used by one thread at a time: a collection indexed with the served
model embeds through the engine thread (`EngineLoop.call`, between two batch steps, one text
per call so generation never stalls long), the way /v1/embeddings does; one indexed with
another model loads that model once and embeds under its own lock. Everything here is
blocking and runs in a worker thread (`asyncio.to_thread`), never on the event loop."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from llamita.api.llm import LLM
from llamita.errors import CollectionError, LlamitaError
from llamita.rag import Collection, Hit
from llamita.rag.embedder import Embedder, EmbeddingSpec
from llamita.rag.readers import SUFFIXES
from llamita.rag.store import collection_path, collections_dir, delete_collection, list_collections
from llamita.serving.engine_loop import EngineLoop
from llamita.serving.errors import APIError

T = TypeVar("T")
MAX_FILES_PER_UPLOAD = 64


class EngineEmbedder(Embedder):
    """The served model's embedder: every vector is computed on the engine thread. Called from
    a worker thread; it hands each text to the engine loop through the event loop `events`."""

    def __init__(self, loop: EngineLoop, events: asyncio.AbstractEventLoop, spec: EmbeddingSpec | None) -> None:
        super().__init__(LLM.from_loaded(loop.engine.loaded), spec)
        self._loop = loop
        self._events = events

    def _on_engine(self, fn: Callable[[], T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a worker thread, as it must be
            return asyncio.run_coroutine_threadsafe(self._loop.call(lambda engine: fn()), self._events).result()
        raise RuntimeError("EngineEmbedder was called on the event loop: it would wait for itself")

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return super().embed_documents(texts)
        return np.concatenate([self._on_engine(partial(Embedder.embed_documents, self, [t])) for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._on_engine(lambda: Embedder.embed_query(self, text))


class LockedEmbedder(Embedder):
    """A collection's own embedding model (not the served one), used by one thread at a time."""

    def __init__(self, llm: LLM, spec: EmbeddingSpec | None) -> None:
        super().__init__(llm, spec)
        self._lock = threading.Lock()

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return super().embed_documents(texts)

    def embed_query(self, text: str) -> np.ndarray:
        with self._lock:
            return super().embed_query(text)


def _not_found(name: str) -> APIError:
    return APIError(
        404,
        f"there is no collection '{name}': create it with POST /v1/collections",
        param="name",
        code="collection_not_found",
    )


class Collections:
    """The server's collections (blocking methods: call them through asyncio.to_thread)."""

    def __init__(self, loop: EngineLoop, data_dir: str | os.PathLike[str], events: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.data_dir = Path(data_dir)
        self.events = events
        self._open: dict[str, Collection] = {}
        self._embedding: set[str] = set()  # open collections given their embedder
        self._models: dict[str, LLM] = {}  # other embedding models, by path, loaded once
        self._lock = threading.Lock()  # guards the two dicts and a collection's first opening
        self._writing: dict[str, threading.Lock] = {}  # one upload or delete at a time per collection

    # -- names and places --------------------------------------------------------------
    def path(self, name: str) -> Path:
        """The collection's database; 400 for a name that is not a plain file name."""
        try:
            return collection_path(name, self.data_dir)
        except CollectionError as e:
            raise APIError(400, str(e), param="name", code="invalid_collection_name") from None

    def uploads(self, name: str) -> Path:
        return collections_dir(self.data_dir) / f"{name}.files"

    def source_name(self, name: str, path: str) -> str:
        """How a file is named over HTTP: its name for an uploaded file, its path for one the
        CLI indexed from elsewhere."""
        folder = str(self.uploads(name)) + os.sep
        return path[len(folder) :] if path.startswith(folder) else path

    def open(self, name: str, *, embedding: bool = False) -> Collection:
        """The collection (404 if there is none); with `embedding`, ready to embed with the
        model it was indexed with (listing it or a BM25 search need no model)."""
        if not self.path(name).exists():
            self._forget(name)
            raise _not_found(name)
        with self._lock:
            if name not in self._open:
                self._open[name] = Collection(name, data_dir=self.data_dir)
            collection = self._open[name]
            if embedding and name not in self._embedding:
                collection.use_embedder(self._embedder(collection))
                self._embedding.add(name)
            return collection

    def _served_path(self) -> str:
        return str(self.loop.engine.loaded.path)

    def _embedder(self, collection: Collection) -> Embedder:
        path = collection.settings.get("embedding_model") or self._served_path()
        if Path(path).resolve() == Path(self._served_path()).resolve():
            return EngineEmbedder(self.loop, self.events, collection.recorded_spec())
        if path not in self._models:
            if not Path(path).exists():
                raise APIError(
                    400,
                    f"collection '{collection.name}' was indexed with {path}, which is gone",
                    code="embedding_model_missing",
                )
            self._models[path] = LLM(path)
        return LockedEmbedder(self._models[path], collection.recorded_spec())

    # -- collections -------------------------------------------------------------------
    def names(self) -> list[str]:
        return list_collections(self.data_dir)

    def create(self, name: str, embedding_model: str | None = None) -> dict[str, Any]:
        """A new empty collection; embedding_model: a GGUF path or library name (default: the
        served model). 409 if it exists."""
        path = self.path(name)
        if path.exists():
            raise APIError(409, f"collection '{name}' already exists", param="name", code="collection_exists")
        model_path = self._served_path()
        if embedding_model:
            try:
                llm = LLM(embedding_model)
            except Exception as e:  # a file that is not a loadable model is the client's error
                if not isinstance(e, (LlamitaError, OSError, ValueError, KeyError)):
                    raise
                raise APIError(
                    400, f"cannot load embedding model {embedding_model!r}: {e}", param="embedding_model"
                ) from None
            model_path = str(llm.loaded.path)
            with self._lock:
                self._models.setdefault(model_path, llm)
        collection = Collection(name, data_dir=self.data_dir, create=True)
        collection.store.set_meta({"embedding_model": model_path})
        return self.describe(name)

    def describe(self, name: str) -> dict[str, Any]:
        """Name, embedding model, chunk settings, files (name, bytes, chunks), totals."""
        collection = self.open(name)
        meta = collection.settings
        n_files, n_chunks, n_tokens = collection.store.counts()
        files = [
            {
                "name": self.source_name(name, f["path"]),
                "bytes": f["size"],
                "chunks": f["n_chunks"],
                "sha256": f["sha256"],
                "indexed_at": f["indexed_at"],
            }
            for f in collection.files()
        ]
        return {
            "object": "collection",
            "name": name,
            "files": files,
            "n_files": n_files,
            "n_chunks": n_chunks,
            "n_tokens": n_tokens,
            "bytes": sum(f["bytes"] for f in files),
            "database_bytes": self.path(name).stat().st_size,
            "embedding_model": os.path.basename(meta.get("embedding_model", "")),
            "chunk_tokens": int(meta["chunk_tokens"]) if "chunk_tokens" in meta else None,
        }

    def delete(self, name: str) -> None:
        self.path(name)
        with self._writer(name):
            self._forget(name)
            if not delete_collection(name, self.data_dir):
                raise _not_found(name)
            shutil.rmtree(self.uploads(name), ignore_errors=True)

    # -- files -------------------------------------------------------------------------
    def add_files(self, name: str, files: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
        """Saves the uploaded (file name, bytes) and indexes them. A file that cannot be read
        is reported by name in `skipped` (and not kept); the others are indexed."""
        collection = self.open(name, embedding=True)
        folder = self.uploads(name)
        folder.mkdir(parents=True, exist_ok=True)
        skipped: list[dict[str, str]] = []
        saved: list[Path] = []
        for filename, data in files:
            target = folder / _file_name(filename)
            if target.suffix.lower() not in SUFFIXES:
                skipped.append(
                    {
                        "file": target.name,
                        "reason": f"unsupported file type '{target.suffix}' (supported: {', '.join(SUFFIXES)})",
                    }
                )
                continue
            target.write_bytes(data)
            saved.append(target)
        with self._writer(name):
            report = collection.add(saved) if saved else None
        if report is not None:
            for path, why in report.skipped:
                Path(path).unlink(missing_ok=True)
                skipped.append({"file": self.source_name(name, path), "reason": why})

        def names(paths: list[str]) -> list[str]:
            return [self.source_name(name, p) for p in paths]

        return {
            "collection": name,
            "added": names(report.added) if report else [],
            "updated": names(report.updated) if report else [],
            "unchanged": names(report.unchanged) if report else [],
            "skipped": skipped,
            "chunks": report.chunks if report else 0,
        }

    def delete_file(self, name: str, filename: str) -> None:
        collection = self.open(name)
        known = {self.source_name(name, f["path"]): f["path"] for f in collection.files()}
        if filename not in known:
            raise APIError(404, f"collection '{name}' has no file '{filename}'", param="file", code="file_not_found")
        with self._writer(name):
            collection.store.remove_files([known[filename]])
            path = Path(known[filename])
            if path.parent == self.uploads(name):
                path.unlink(missing_ok=True)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._open.pop(name, None)
            self._embedding.discard(name)

    def _writer(self, name: str) -> threading.Lock:
        with self._lock:
            return self._writing.setdefault(name, threading.Lock())

    # -- search ------------------------------------------------------------------------
    def search(self, names: Sequence[str], query: str, top: int, mode: str) -> list[tuple[str, Hit]]:
        """The `top` best chunks over the collections `names`: each searched alone, then merged
        by score (reciprocal-rank scores for hybrid are comparable across collections; BM25's
        and cosine's are each on one scale). (collection, hit), best first."""
        found = [
            (name, hit)
            for name in names
            for hit in self.open(name, embedding=mode != "bm25").search(query, top, mode=mode)
        ]
        return sorted(found, key=lambda pair: -pair[1].score)[:top]

    def hit_json(self, name: str, hit: Hit) -> dict[str, Any]:
        return {
            "collection": name,
            "source": self.source_name(name, hit.source),
            "location": hit.location,
            "heading": hit.heading,
            "page_start": hit.page_start,
            "page_end": hit.page_end,
            "text": hit.text,
            "score": hit.score,
            "bm25_rank": hit.bm25_rank,
            "dense_rank": hit.dense_rank,
        }


def _file_name(filename: str) -> str:
    """An uploaded file's name as a plain name in the uploads folder: no folders, no '..',
    nothing hidden. 400 otherwise."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if not name or name.startswith(".") or name != filename or "\x00" in name or len(name) > 255:
        raise APIError(
            400,
            f"bad file name {filename!r}: give a plain file name (no folders, not hidden)",
            param="files",
            code="invalid_file_name",
        )
    return name
