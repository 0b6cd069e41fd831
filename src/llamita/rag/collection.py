"""`Collection`: the Python API of a document collection. Index files into it, search it
(hybrid BM25 + dense by reciprocal rank fusion, or either alone), and answer questions from it
with numbered sources.

>>> docs = Collection("curso", create=True)
>>> docs.add(["notes/"])                       # incremental: re-run after editing files
>>> [h.source for h in docs.search("¿qué es la atención?", top=3)]
>>> docs.ask("¿Cuántos parámetros tiene Llama 3.1 405B?").text
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamita.api.llm import LLM
from llamita.errors import CollectionError, InvalidParameterError
from llamita.rag.answer import Answer, ask
from llamita.rag.embedder import Embedder, EmbeddingSpec
from llamita.rag.indexer import IndexReport, ProgressCallback, index_paths
from llamita.rag.rerank import rerank as rerank_hits
from llamita.rag.retrieval import (
    Hit,
    dense_ranking,
    dense_weight,
    fts_query,
    mean_reciprocal_rank,
    pseudo_queries,
    reciprocal_rank_fusion,
)
from llamita.rag.store import CollectionStore, collection_path

MODES = ("hybrid", "bm25", "dense")
CHUNK_TOKENS = 256
CHUNK_OVERLAP = 32
CANDIDATES = 50  # from each ranking, before fusion


class Collection:
    """A named collection in `data_dir/collections/NAME.db` (data_dir: the chat store's
    folder by default).

    embedder: what embeds queries and documents; None loads the model the collection was
    indexed with (or, for a new collection, the default model) on first need. A collection
    refuses an embedder of another model: its vectors would not be comparable.
    """

    def __init__(
        self,
        name: str,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        create: bool = False,
        embedder: Embedder | None = None,
    ) -> None:
        self.name = name
        self.store = CollectionStore(collection_path(name, data_dir), create=create)
        self._embedder: Embedder | None = None
        self._vectors: tuple[int, Any, torch.Tensor] | None = None  # (generation, ids, matrix)
        if embedder is not None:
            self.use_embedder(embedder)

    # -- the embedding model -----------------------------------------------------------
    @property
    def settings(self) -> dict[str, str]:
        """What the collection was built with: embedding_model (path), embedding_name, dim,
        pooling, query_prefix, document_prefix, chunk_tokens, chunk_overlap."""
        return self.store.meta()

    def use_embedder(self, embedder: Embedder) -> None:
        meta = self.settings
        recorded = meta.get("embedding_name")
        if recorded and (recorded != embedder.name or int(meta["dim"]) != embedder.dim):
            raise CollectionError(
                f"collection '{self.name}' was indexed with {recorded} ({meta['dim']} dimensions), not "
                f"{embedder.name}: use --embedding-model {meta['embedding_model']}, or index into a new collection"
            )
        self._embedder = embedder

    def recorded_spec(self) -> EmbeddingSpec | None:
        """The pooling and prefixes the collection was indexed with; None before its first file."""
        meta = self.settings
        if not meta.get("pooling"):
            return None
        return EmbeddingSpec(meta["pooling"], meta.get("query_prefix", ""), meta.get("document_prefix", ""))

    @property
    def embedder(self) -> Embedder:
        """The embedder in use, loading the collection's model on first use."""
        if self._embedder is None:
            meta = self.settings
            path = meta.get("embedding_model") or None
            if path is not None and not Path(path).exists():
                raise CollectionError(
                    f"collection '{self.name}' was indexed with {path}, which is gone: "
                    f"pass that model with --embedding-model, or re-index"
                )
            self.use_embedder(Embedder(LLM(path), self.recorded_spec()))
        assert self._embedder is not None
        return self._embedder

    # -- indexing ----------------------------------------------------------------------
    def add(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> IndexReport:
        """Indexes files and folders; re-running re-indexes only changed files and drops
        deleted ones (see rag/indexer.py). The chunk budget is fixed when the collection is
        first filled: asking for another one later is an error (it would mix two chunkings)."""
        meta = self.settings
        budget = int(meta.get("chunk_tokens", chunk_tokens or CHUNK_TOKENS))
        overlap = int(meta.get("chunk_overlap", CHUNK_OVERLAP if chunk_overlap is None else chunk_overlap))
        for option, asked, fixed in (("chunk_tokens", chunk_tokens, budget), ("chunk_overlap", chunk_overlap, overlap)):
            if asked is not None and asked != fixed:
                raise InvalidParameterError(
                    option, f"collection '{self.name}' was built with {fixed}; make a new collection to change it"
                )
        embedder = self.embedder
        if "embedding_name" not in meta:
            self.store.set_meta(
                {
                    "embedding_model": embedder.model_path,
                    "embedding_name": embedder.name,
                    "dim": str(embedder.dim),
                    "pooling": embedder.spec.pooling,
                    "query_prefix": embedder.spec.query_prefix,
                    "document_prefix": embedder.spec.document_prefix,
                    "chunk_tokens": str(budget),
                    "chunk_overlap": str(overlap),
                    "created_at": str(time.time()),
                }
            )
        report = index_paths(self.store, embedder, paths, budget=budget, overlap=overlap, on_progress=on_progress)
        if report.added or report.updated or report.removed or "dense_weight" not in self.settings:
            self.measure_dense_weight()
        return report

    def files(self) -> list[dict[str, Any]]:
        return self.store.files()

    # -- search ------------------------------------------------------------------------
    def _matrix(self) -> tuple[Any, torch.Tensor]:
        """Every chunk's vector, read once and again only after the collection changed.

        Held as float16: half the memory, and torch's float16 matrix-vector product (float32
        accumulation) took 17 ms for 100,000 x 576 against 49 ms in float32 (1 thread, this
        project's AMD EPYC); scores move by < 1e-4, the top 10 of random queries unchanged."""
        generation = self.store.generation()
        if self._vectors is None or self._vectors[0] != generation:
            ids, matrix = self.store.vectors(self.embedder.dim)
            self._vectors = (generation, ids, torch.from_numpy(matrix.astype(np.float16)))
        return self._vectors[1], self._vectors[2]

    def measure_dense_weight(self) -> float:
        """Measures, without labels, how much the dense ranking is worth beside BM25 in this
        collection, and records it (meta `dense_weight`; hybrid search reads it): sentences of
        chunks drawn at random are searched both ways, and the rank each way gives the sentence's
        own chunk decides the weight (rag/retrieval.py `dense_weight`). Run after every `add`
        that changed something; ~50 query embeddings."""
        queries = pseudo_queries(self.store.chunk_texts())
        n_chunks = self.store.counts()[1]
        if len(queries) < 8:  # too few to measure: plain RRF
            weight, detail = 1.0, f"unmeasured ({len(queries)} pseudo-queries)"
        else:
            ids, matrix = self._matrix()
            bm25_ranks, dense_ranks = [], []
            for chunk_id, sentence in queries:
                match = fts_query(sentence)
                bm25 = [i for i, _ in self.store.bm25(match, CANDIDATES)] if match else []
                dense = [i for i, _ in dense_ranking(ids, matrix, self.embedder.embed_query(sentence), CANDIDATES)]
                bm25_ranks.append(bm25.index(chunk_id) + 1 if chunk_id in bm25 else None)
                dense_ranks.append(dense.index(chunk_id) + 1 if chunk_id in dense else None)
            weight = dense_weight(bm25_ranks, dense_ranks, n_chunks, CANDIDATES)
            detail = (
                f"{len(queries)} pseudo-queries; mean reciprocal rank bm25 {mean_reciprocal_rank(bm25_ranks):.3f}, "
                f"dense {mean_reciprocal_rank(dense_ranks):.3f}"
            )
        self.store.set_meta({"dense_weight": repr(weight), "dense_weight_measure": detail})
        return weight

    def _dense_weight(self) -> float:
        recorded = self.settings.get("dense_weight")
        return float(recorded) if recorded is not None else self.measure_dense_weight()

    def search(
        self,
        query: str,
        top: int = 5,
        *,
        mode: str = "hybrid",
        candidates: int = CANDIDATES,
        rerank: int = 0,
        reranker: LLM | None = None,
    ) -> list[Hit]:
        """The `top` chunks for `query`, best first. mode: hybrid (BM25 and dense fused by
        reciprocal rank fusion, the dense ranking weighted by `measure_dense_weight`), bm25 or
        dense. rerank: re-order the first `rerank` chunks by how likely a language model finds
        the question after each (rag/rerank.py; `reranker`, default the embedding model's LLM):
        one forward pass per chunk."""
        if rerank:
            found = self.search(query, max(rerank, top), mode=mode, candidates=candidates)
            return rerank_hits(reranker or self.embedder.llm, query, found)[:top]
        if mode not in MODES:
            raise InvalidParameterError("mode", f"must be one of {MODES}, got {mode!r}")
        if top < 1:
            raise InvalidParameterError("top", f"must be at least 1, got {top}")
        if not query.strip():
            raise InvalidParameterError("query", "is empty")
        pool = max(candidates, top)
        bm25: list[tuple[int, float]] = []
        dense: list[tuple[int, float]] = []
        if mode != "dense":
            match = fts_query(query)
            bm25 = self.store.bm25(match, pool) if match else []
        if mode != "bm25":
            ids, matrix = self._matrix()
            dense = dense_ranking(ids, matrix, self.embedder.embed_query(query), pool)
        if mode == "hybrid":
            ranked = reciprocal_rank_fusion(
                [[i for i, _ in bm25], [i for i, _ in dense]], weights=(1.0, self._dense_weight())
            )
        else:
            ranked = bm25 if mode == "bm25" else dense
        chosen = ranked[:top]
        rows = self.store.chunks([i for i, _ in chosen])
        bm25_rank = {i: r for r, (i, _) in enumerate(bm25, start=1)}
        dense_rank = {i: r for r, (i, _) in enumerate(dense, start=1)}
        return [
            Hit(
                i,
                rows[i]["text"],
                rows[i]["source"],
                rows[i]["heading"],
                rows[i]["page_start"],
                rows[i]["page_end"],
                score,
                bm25_rank.get(i),
                dense_rank.get(i),
            )
            for i, score in chosen
            if i in rows
        ]

    # -- answers -----------------------------------------------------------------------
    def ask(self, question: str, llm: LLM | None = None, **kwargs: Any) -> Answer:
        """Answers `question` from this collection with `llm` (default: the embedding model's
        LLM); the options are rag/answer.py `ask`'s."""
        return ask(self, question, llm or self.embedder.llm, **kwargs)
