"""Ask your own documents: collections of files indexed for hybrid search (BM25 over SQLite
FTS5 + dense vectors from llamita's own embeddings, fused by reciprocal rank fusion) and
answers that cite their sources. Start at `Collection` (rag/collection.py)."""

from __future__ import annotations

from llamita.rag.collection import Collection
from llamita.rag.retrieval import Hit

__all__ = ["Collection", "Hit"]
