"""Sentence embeddings from a causal language model: the mean of the final hidden states over
the input's tokens, scaled to unit length (llama.cpp's `--pooling mean`, what its server and
Ollama return for a Llama model), so that the dot product of two embeddings is their cosine
similarity."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llamita.engine.chunked import check_ids, hidden_chunks
from llamita.model.transformer import Transformer


def embed(model: Transformer, ids: Sequence[int], n_tokens: int, normalize: bool = True) -> torch.Tensor:
    """One embedding (dim,) float32 for the token ids `ids`."""
    check_ids(model, ids, n_tokens)
    total = torch.zeros(model.config.dim, dtype=torch.float32, device=model.device)
    for _, hidden in hidden_chunks(model, ids):
        total += hidden.float().sum(dim=0)
    mean = total / len(ids)
    return torch.nn.functional.normalize(mean, dim=0) if normalize else mean
