"""Fixtures for the RAG tests: a fast stand-in embedder (word hashing) for the tests of
indexing and storage, so they run in milliseconds; the retrieval-quality test uses the real
default model."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from llamita.rag.embedder import EmbeddingSpec


class HashEmbedder:
    """Bag-of-words vectors (each word hashed to a dimension), unit length; tokens = words."""

    name = "hash-embedder"
    model_path = "hash-embedder"
    dim = 64
    spec = EmbeddingSpec()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1
        return v / max(float(np.linalg.norm(v)), 1e-9)

    def embed_documents(self, texts):
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def embed_query(self, text):
        return self._vector(text)


@pytest.fixture
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()
