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
from llamita.kernels import native
from llamita.kernels.native import KernelOps

# Cache dtypes whose decode steps attend in place (PagedKVCache.attend): bfloat16 (the default
# where the CPU has AVX-512 BF16), float16 (the cache of float32 models, `cache_dtype`) and
# float32. With the operator in vectors of the level's own width, float32 caches on AVX2 gained
# 12-14% (tg128 and tg128 x 8 of the default model, 2 threads) over gathering the blocks for
# MKL's matmuls (docs/performance.md).
IN_PLACE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def cache_dtype(model_dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype of the paged KV cache of a model computing in `model_dtype` on `device`.

    float16 for a float32 model on the CPU where llamita's attention operator loads, as
    llama.cpp keeps its cache by default: half the memory of float32 and half the bytes a decode
    step reads, which at long contexts is most of the step (the default model at 2,048
    positions held to AVX2: the attention 5.6 ms of a 9.3 ms one-row step in float32). Keys
    and values are rounded once, when written, and attended in float32. Every other model keeps
    its own dtype (bfloat16 already is 16 bits; a GPU's attention has no operator here)."""
    if model_dtype == torch.float32 and torch.device(device).type == "cpu" and in_place_attention_ops() is not None:
        return torch.float16
    return model_dtype


def kv_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token takes over all layers."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * torch.empty((), dtype=dtype).element_size()


class PagedKVCache:
    """k[layer], v[layer]: (n_blocks, block_size, n_kv_heads, head_dim), after RoPE.

    Token-major blocks: a batch row's keys are its blocks gathered whole (one `index_select`
    copy) and viewed as (n_kv_heads, length, head_dim) without a second copy to transpose
    them; writing a token is one `index_copy_` of its slot. (Head-major blocks with advanced
    indexing took 2-2.5x as long per layer at 8 sequences, a tenth of the batched step.)

    Before each forward the caller binds the block tables of the batch rows
    (`bind(tables)`, (B, max_blocks) int64, padded with any valid id: padding is never read
    unmasked, because attention only looks at positions <= each query's own).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        n_blocks: int,
        block_size: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if n_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token, got {n_blocks} x {block_size}")
        shape = (n_blocks, block_size, cfg.n_kv_heads, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.n_blocks = n_blocks
        self.block_size = block_size
        self.tables: torch.Tensor | None = None
        self._tables_on: dict[torch.device, torch.Tensor] = {}  # copies for offloaded layers
        # Slots written and blocks read, the same for every layer of one forward pass: kept
        # with the positions tensor they were computed from (held, so it is the same object).
        self._indices: tuple[torch.Tensor, int, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def over(cls, keys: list[torch.Tensor], values: list[torch.Tensor]) -> PagedKVCache:
        """A cache over existing per-layer pools (n_blocks, block_size, n_kv_heads, head_dim),
        e.g. the tensors a compiled step receives; nothing is allocated or copied."""
        cache = cls.__new__(cls)
        cache.k, cache.v = list(keys), list(values)
        cache.n_blocks, cache.block_size = keys[0].shape[0], keys[0].shape[1]
        cache.tables, cache._tables_on, cache._indices = None, {}, None
        return cache

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def bind(self, tables: torch.Tensor) -> None:
        """Use these block tables (B, max_blocks) for the next forward pass."""
        self.tables = tables
        self._tables_on = {}
        self._indices = None

    def _slots(self, positions: torch.Tensor, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The bound tables on `device`, and the pool slots (B * S,) that `positions` (B, S)
        write; the same for every layer of one forward pass (kept with `positions`)."""
        tables = self.tables
        assert tables is not None, "bind() the block tables before the forward pass"
        if tables.device != device:
            if device not in self._tables_on:
                self._tables_on[device] = tables.to(device)
            tables = self._tables_on[device]
        bs = self.block_size
        memo = self._indices
        if memo is None or memo[0] is not positions or memo[1] != length or memo[2].device != device:
            slots = tables.gather(1, positions // bs) * bs + positions % bs  # (B, S)
            memo = self._indices = (positions, length, slots.reshape(-1), tables[:, : -(-length // bs)].reshape(-1))
        return tables, memo[2]

    def attend(
        self, layer: int, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int
    ) -> torch.Tensor | None:
        """A decode step's attention read in place: write k, v (B, 1, n_kv, hd) at `positions`
        (B, 1), then attend each row's query q (B, 1, n_heads, hd) to its positions 0..its own
        straight from the block pools (llamita's `paged_decode_attention`, kernels/csrc/
        attention.cpp): (B, n_heads, 1, hd) in q's dtype, as single_query_attention returns it.
        None (nothing written) where that operator is not loaded, the cache's dtype is not in
        IN_PLACE_DTYPES or the step is not one token a row on the CPU: the caller then runs
        `update` and attends to its copy."""
        ops = in_place_attention_ops()
        pool = self.k[layer]
        if ops is None or q.shape[1] != 1 or q.device.type != "cpu" or pool.device != q.device:
            return None
        if pool.dtype not in IN_PLACE_DTYPES:
            return None
        tables, slots = self._slots(positions, length, q.device)
        b, n_kv, hd = q.shape[0], k.shape[-2], k.shape[-1]
        for pool, new in ((self.k[layer], k), (self.v[layer], v)):
            pool.view(-1, n_kv, hd).index_copy_(0, slots, new.reshape(-1, n_kv, hd).to(pool.dtype))
        out: torch.Tensor = ops.paged_decode_attention(
            q[:, 0].float(), self.k[layer], self.v[layer], tables, positions.reshape(b), hd**-0.5
        )
        return out.to(q.dtype).unsqueeze(2)

    def update(
        self,
        layer: int,
        rows: torch.Tensor | None,
        positions: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        length: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, S, n_kv, hd) at `positions` (B, S) of the bound block tables, then
        return positions 0..length-1 of every batch row: (B, n_kv, length, hd) each, in k's
        dtype.

        `rows` is unused: the bound tables already say where each batch row lives. A layer
        whose keys arrive on another device (GPU/CPU offload) has its blocks moved there on
        its first write.
        """
        if self.k[layer].device != k.device:  # the layer runs elsewhere (model/offload.py)
            self.k[layer], self.v[layer] = self.k[layer].to(k.device), self.v[layer].to(k.device)
        tables, slots = self._slots(positions, length, k.device)
        assert self._indices is not None
        used = self._indices[3]
        b, n_kv, hd = tables.shape[0], k.shape[-2], k.shape[-1]
        out = []
        for pool, new in ((self.k[layer], k), (self.v[layer], v)):
            pool.view(-1, n_kv, hd).index_copy_(0, slots, new.reshape(-1, n_kv, hd).to(pool.dtype))
            # (B * n, bs, n_kv, hd) -> (B, n_kv, length, hd): the rows' blocks laid end to end,
            # in the model's dtype (a float16 cache of a float32 model is widened here).
            rows = pool.index_select(0, used).view(b, -1, n_kv, hd)[:, :length].transpose(1, 2)
            out.append(rows.to(new.dtype))
        return out[0], out[1]


def in_place_attention_ops() -> KernelOps | None:
    """llamita's operators with `paged_decode_attention`, or None (no level loads)."""
    return native.kernel_ops() if native.kernel_level() is not None else None
