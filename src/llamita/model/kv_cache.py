"""A static KV cache: one preallocated slab per layer, rows = independent sequences."""

from __future__ import annotations

import torch

from llamita.config import ModelConfig


class KVCache:
    """Keys and values after RoPE, n_kv_heads wide (heads are not repeated for GQA).

    k[layer], v[layer]: (n_rows, n_kv_heads, max_len, head_dim). A row holds one sequence;
    position p of that sequence lives at index p.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        n_rows: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_rows, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.n_rows = n_rows
        self.max_len = max_len

    @classmethod
    def over(cls, keys: list[torch.Tensor], values: list[torch.Tensor]) -> KVCache:
        """A cache over existing per-layer slabs (n_rows, n_kv_heads, max_len, head_dim), e.g. the
        tensors a compiled step receives; nothing is allocated or copied."""
        cache = cls.__new__(cls)
        cache.k, cache.v = list(keys), list(values)
        cache.n_rows, cache.max_len = keys[0].shape[0], keys[0].shape[2]
        return cache

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def update(
        self,
        layer: int,
        rows: torch.Tensor | None,
        positions: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        length: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, S, n_kv, hd) at `positions` (B, S) of cache `rows` (B,), then return
        the first `length` positions of those rows: (B, n_kv, length, hd) each.

        rows=None means every row, in order (B == n_rows); reading then needs no copy.
        A layer whose keys arrive on another device (GPU/CPU offload) has its slab moved
        there on its first write.
        """
        if self.k[layer].device != k.device:  # the layer runs elsewhere (model/offload.py)
            self.k[layer], self.v[layer] = self.k[layer].to(k.device), self.v[layer].to(k.device)
        r = (torch.arange(self.n_rows, device=positions.device) if rows is None else rows)[:, None]
        # Advanced indices around a slice put their dims first: the target is (B, S, n_kv, hd).
        self.k[layer][r, :, positions] = k
        self.v[layer][r, :, positions] = v
        if rows is None:
            return self.k[layer][:, :, :length], self.v[layer][:, :, :length]
        return self.k[layer][rows, :, :length], self.v[layer][rows, :, :length]
