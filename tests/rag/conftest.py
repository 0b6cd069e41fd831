"""Fixtures for the RAG tests: a fast stand-in embedder (word hashing) for the tests of
indexing and storage, so they run in milliseconds; the retrieval-quality test uses the real
default model."""

from __future__ import annotations

import pytest

from rag_documents import HashEmbedder


@pytest.fixture
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()
