"""Run one token sequence through the model in chunks, yielding each chunk's final hidden
states: memory stays bounded by the chunk (attention scores are chunk x length) while every
position still sees the whole prefix, through a KV cache sized to the sequence."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from llamita.errors import ContextOverflowError, InvalidParameterError
from llamita.model.kv_cache import KVCache
from llamita.model.transformer import Transformer

CHUNK = 256


def check_ids(model: Transformer, ids: Sequence[int], vocab_size: int, what: str = "input") -> None:
    """Typed errors for an empty input, unknown ids, or more tokens than the context holds."""
    if not ids:
        raise InvalidParameterError(what, "is empty (no tokens)")
    bad = [t for t in ids if not (isinstance(t, int) and 0 <= t < vocab_size)]
    if bad:
        raise InvalidParameterError(what, f"token id {bad[0]} is outside the vocabulary")
    window = model.config.context_length
    if len(ids) > window:
        raise ContextOverflowError(
            f"the {what} has {len(ids)} tokens but the context window holds {window}: {len(ids) - window} too many"
        )


def hidden_chunks(
    model: Transformer, ids: Sequence[int], chunk: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, hidden states (S, dim)) for consecutive chunks of `ids` (CHUNK tokens each)."""
    chunk = chunk or CHUNK
    device = model.device
    cache = KVCache(model.config, 1, len(ids), dtype=model.dtype, device=device)
    tokens = torch.tensor([list(ids)], device=device)
    with torch.inference_mode():
        for start in range(0, len(ids), chunk):
            part = tokens[:, start : start + chunk]
            positions = torch.arange(start, start + part.shape[1], device=device)[None]
            yield start, model.hidden_states(part, positions, cache)[0]
