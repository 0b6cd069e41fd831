"""Text -> unit-length vectors for a collection, through llamita's own embedding path
(engine/embeddings.py) on any Llama-architecture model, with the pooling the model declares
and the query/document prefixes it expects; and the token counter chunks are measured with."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llamita.api.llm import LLM
from llamita.engine.embeddings import embed

# llama.cpp's LLAMA_POOLING_TYPE numbers, as GGUF files store them in `{arch}.pooling_type`.
_GGUF_POOLING = {1: "mean", 3: "last"}


@dataclass(frozen=True)
class EmbeddingSpec:
    """How a model turns text into a vector. Prefixes are put before the text: instruction-
    tuned embedding models expect one for queries ("query: ", "Instruct: ...\\nQuery: ") and
    often another for passages; a plain chat model expects none."""

    pooling: str = "mean"
    query_prefix: str = ""
    document_prefix: str = ""


def declared_pooling(llm: LLM) -> str:
    """The pooling the model file declares (GGUF `{arch}.pooling_type`), else mean."""
    meta = llm.loaded.metadata
    arch = meta.get("general.architecture", "llama")
    return _GGUF_POOLING.get(int(meta.get(f"{arch}.pooling_type", 1)), "mean")


class Embedder:
    """Embeds queries and documents with one loaded model.

    name: what the collection records to refuse mixing vectors of two models (the file name);
    model_path: where to load the model again to embed queries.
    """

    def __init__(self, llm: LLM, spec: EmbeddingSpec | None = None) -> None:
        self.llm = llm
        self.spec = spec or EmbeddingSpec(pooling=declared_pooling(llm))
        self.model_path = str(llm.loaded.path)
        self.name = os.path.basename(self.model_path)
        self.dim = llm.config.dim

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as the model reads it (no BOS): the chunk budget's unit."""
        return len(self.llm.tokenizer.encode(text))

    def _vector(self, text: str) -> np.ndarray:
        ids = self.llm.encode_prompt(text)[: self.llm.config.context_length]
        model = self.llm.loaded.model
        return embed(model, ids, self.llm.tokenizer.vocab_size, pooling=self.spec.pooling).cpu().numpy()

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit rows."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vector(self.spec.document_prefix + t) for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        """(dim,) float32, unit length."""
        return self._vector(self.spec.query_prefix + text)
