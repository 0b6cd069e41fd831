"""Sentence embeddings from a causal language model: the mean of the final hidden states over
the input's tokens, scaled to unit length (llama.cpp's `--pooling mean`, what its server and
Ollama return for a Llama model), so that the dot product of two embeddings is their cosine
similarity. Last-token pooling is there for embedding models that read a sentence there."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llamita.engine.chunked_forward import check_ids, hidden_chunks
from llamita.errors import InvalidParameterError
from llamita.model.transformer import Transformer

POOLING = ("mean", "last")


def embed(
    model: Transformer, ids: Sequence[int], vocab_size: int, normalize: bool = True, pooling: str = "mean"
) -> torch.Tensor:
    """One embedding (dim,) float32 for the token ids `ids`.

    pooling: "mean" over the tokens, or "last" (the final token's hidden state: embedding
    models trained from a causal LM, such as e5-mistral, read the sentence there)."""
    if pooling not in POOLING:
        raise InvalidParameterError("pooling", f"must be one of {POOLING}, got {pooling!r}")
    check_ids(model, ids, vocab_size)
    total = torch.zeros(model.config.dim, dtype=torch.float32, device=model.device)
    for _, hidden in hidden_chunks(model, ids):
        total = hidden[-1].float() if pooling == "last" else total + hidden.float().sum(dim=0)
    pooled = total if pooling == "last" else total / len(ids)
    return torch.nn.functional.normalize(pooled, dim=0) if normalize else pooled
