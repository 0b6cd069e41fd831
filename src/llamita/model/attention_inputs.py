"""What every block's attention reads in one forward pass, computed once at the model's top.

As nano-vllm's per-step context, but passed as an argument rather than held in a global: the
Transformer builds one `AttentionInputs` from the call's positions, cache and rows, and each
Block hands the same object to its Attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from llamita.model.kv_cache import KVCache
from llamita.model.paged_kv_cache import PagedKVCache
from llamita.model.rope import rope_cos_sin


@dataclass(frozen=True)
class AttentionInputs:
    """One forward pass's attention inputs, the same for every layer.

    cos, sin: RoPE tables (B, S, head_dim) in the compute dtype. positions: (B, S) absolute.
    mask: (B, 1, S, length) bool, True = attend, or None for plain causal attention over the
    S tokens themselves (no cache, or every row at positions 0..S-1 and no `key_length`). cache: where keys and values are written and read (None:
    none). rows: the static cache's rows of the batch (None: every row in order). length: the
    key positions attended (S without a cache).
    """

    cos: torch.Tensor
    sin: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor | None
    cache: KVCache | PagedKVCache | None
    rows: torch.Tensor | None
    length: int

    @classmethod
    def build(
        cls,
        positions: torch.Tensor,
        inv_freq: torch.Tensor,
        dtype: torch.dtype,
        cache: KVCache | PagedKVCache | None = None,
        rows: torch.Tensor | None = None,
        key_length: int | None = None,
    ) -> AttentionInputs:
        """The inputs for queries at `positions` (B, S). With a cache, each query attends to
        cache positions 0..its own; `key_length` fixes how many are read (else max(positions)
        + 1, which reads the positions back: a compiled graph passes it as a shape instead)."""
        cos, sin = rope_cos_sin(positions, inv_freq, dtype)
        mask, length = None, positions.shape[1]
        if cache is not None:
            length = key_length if key_length is not None else int(positions.max()) + 1
            if key_length is not None or not _first_chunk(positions):
                # Key j is visible to a query at position p iff j <= p: (B, 1, S, length).
                mask = (torch.arange(length, device=positions.device) <= positions[:, :, None])[:, None]
            # Else every row holds positions 0..S-1: the S keys read back from the cache are
            # these tokens' own, and the mask would be plain causal. Without it SDPA takes its
            # causal path, which skips the keys after each query block (pp512 on AVX2:
            # docs/performance.md, "Prefill (pp512) on AVX2").
        return cls(cos, sin, positions, mask, cache, rows, length)

    def moved(self, move: Callable[[torch.Tensor], torch.Tensor]) -> AttentionInputs:
        """The same inputs with every tensor passed through `move` (e.g. to another device for
        an offloaded block); the cache moves its own slabs (model/kv_cache.py)."""
        return replace(
            self,
            cos=move(self.cos),
            sin=move(self.sin),
            positions=move(self.positions),
            mask=None if self.mask is None else move(self.mask),
            rows=None if self.rows is None else move(self.rows),
        )


def _first_chunk(positions: torch.Tensor) -> bool:
    """True if every row of `positions` (B, S) is 0, 1, ..., S-1 (a prompt's first chunk)."""
    seqlen = positions.shape[1]
    return bool(torch.equal(positions, torch.arange(seqlen, device=positions.device).expand_as(positions)))
