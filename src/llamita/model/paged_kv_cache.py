"""A paged KV cache: one pool of fixed-size blocks per layer, shared by every sequence.

A sequence owns a list of block ids (its block table); position p of it lives in block
table[p // block_size] at offset p % block_size. Blocks are handed out and reclaimed by the
engine's BlockManager, which also lets sequences with the same prefix share blocks. This class
only stores tensors and does the indexing; it has the same `update` interface as the static
KVCache, so the Transformer runs unchanged on either.
"""

from __future__ import annotations

import torch

from llamita.config import ModelConfig


def kv_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token takes over all layers."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * torch.empty((), dtype=dtype).element_size()


class PagedKVCache:
    """k[layer], v[layer]: (n_blocks, n_kv_heads, block_size, head_dim), after RoPE.

    Before each forward the caller binds the block tables of the batch rows
    (`bind(tables)`, (B, max_blocks) int64, padded with any valid id: padding is never read
    unmasked, because attention only looks at positions <= each query's own).
    """

    def __init__(self, cfg: ModelConfig, n_blocks: int, block_size: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        if n_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token, got {n_blocks} x {block_size}")
        shape = (n_blocks, cfg.n_kv_heads, block_size, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.n_blocks = n_blocks
        self.block_size = block_size
        self.tables: torch.Tensor | None = None
        self._tables_on: dict[torch.device, torch.Tensor] = {}  # copies for offloaded layers

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def bind(self, tables: torch.Tensor) -> None:
        """Use these block tables (B, max_blocks) for the next forward pass."""
        self.tables = tables
        self._tables_on = {}

    def update(self, layer: int, rows: torch.Tensor | None, positions: torch.Tensor,
               k: torch.Tensor, v: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, S, n_kv, hd) at `positions` (B, S) of the bound block tables, then
        return positions 0..length-1 of every batch row: (B, n_kv, length, hd) each.

        `rows` is unused: the bound tables already say where each batch row lives. A layer
        whose keys arrive on another device (GPU/CPU offload) has its blocks moved there on
        its first write.
        """
        tables = self.tables
        assert tables is not None, "bind() the block tables before the forward pass"
        if self.k[layer].device != k.device:  # the layer runs elsewhere (model/offload.py)
            self.k[layer], self.v[layer] = self.k[layer].to(k.device), self.v[layer].to(k.device)
        if tables.device != k.device:
            if k.device not in self._tables_on:
                self._tables_on[k.device] = tables.to(k.device)
            tables = self._tables_on[k.device]
        bs = self.block_size
        blocks = tables.gather(1, positions // bs)  # (B, S)
        offsets = positions % bs
        # Advanced indices around a slice put their dims first: the target is (B, S, n_kv, hd).
        self.k[layer][blocks, :, offsets] = k
        self.v[layer][blocks, :, offsets] = v
        n = -(-length // bs)
        b = tables.shape[0]
        used = tables[:, :n]  # (B, n)
        # (B, n, n_kv, bs, hd) -> (B, n_kv, n * bs, hd): the rows' blocks laid end to end.
        keys = self.k[layer][used].transpose(1, 2).reshape(b, -1, n * bs, k.shape[-1])
        values = self.v[layer][used].transpose(1, 2).reshape(b, -1, n * bs, v.shape[-1])
        return keys[:, :, :length], values[:, :, :length]
