"""The decode step over the paged KV cache, compiled ahead of time: the server's engine
(engine/llm_engine.py) steps its running requests through it.

Same method as model/compiled.py (weights are inputs, packages cached by key, built under a
lock), with the paged cache's tensors as inputs: each layer's block pool (n_blocks, block_size,
n_kv_heads, head_dim) and the batch rows' block tables (B, W). Symbolic: the pool's block count,
the table width W and, in the package for 2 or more rows, the batch size, so two packages (one
row; 2..MAX_BATCH rows) serve every step of a server. Each step attends W * block_size
positions, W = the table width the caller pads to (`table_width`): the furthest row's position
rounded up to KEY_BLOCK as in the static step, so the attended length is a function of W and no
shape depends on the positions' values.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from llamita.model.compiled import KEY_BLOCK, CompiledDecoder, _DecodeBody
from llamita.model.paged_kv_cache import PagedKVCache, cache_dtype

if TYPE_CHECKING:
    from llamita.model.transformer import Transformer

# Most rows the many-row package is built for; more decode eagerly. (The default model's bf16
# step does not export for 128 rows and more: a kernel's shape guard.)
MAX_BATCH = 64


def table_width(furthest: int, block_size: int) -> int:
    """Block-table columns a step passes when its furthest row is at position `furthest`:
    enough blocks for the positions up to the next multiple of KEY_BLOCK past it."""
    return -(-((furthest // KEY_BLOCK + 1) * KEY_BLOCK) // block_size)


class _PagedDecodeBody(_DecodeBody):
    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        tables: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
    ) -> torch.Tensor:
        cache = PagedKVCache.over(keys, values)
        cache.bind(tables)
        length = tables.shape[1] * cache.block_size
        return self.last_logits(tokens, positions, cache, length)


class PagedCompiledDecoder(CompiledDecoder):
    """`step(tokens, positions, tables, cache)`: logits (B, vocab) float32 of one token for
    each of B rows of a PagedKVCache, row b's blocks listed in tables[b] (B, >= its blocks),
    as LLMEngine binds them, in `cache_dtype` (the engine's). Packages: one for B = 1, one for
    2 <= B <= MAX_BATCH."""

    kind = "paged"

    def __init__(self, model: Transformer, block_size: int, root: Path | None = None, build: bool = True) -> None:
        self.block_size = block_size
        # The pools are inputs of the exported step, so their dtype is part of the package.
        self.cache_dtype = cache_dtype(model.dtype, "cpu")
        if self.cache_dtype != model.dtype:
            self.kind = f"paged {str(self.cache_dtype).removeprefix('torch.')}"
        super().__init__(model, root, build)

    def __call__(  # type: ignore[override]  # a paged step takes the block tables too
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        tables: torch.Tensor,
        cache: PagedKVCache,
    ) -> torch.Tensor:
        batch = tokens.shape[0]
        if tokens.shape != (batch, 1) or positions.shape != tokens.shape or tables.shape[0] != batch:
            raise ValueError(
                f"a compiled paged step takes (rows, 1) tokens and positions and a block "
                f"table per row, got {tuple(tokens.shape)} and {tuple(tables.shape)}"
            )
        if cache.k[0].dtype != self.cache_dtype:  # the package would read the pools' bytes as its own dtype
            raise ValueError(f"this compiled step reads {self.cache_dtype} pools, the cache holds {cache.k[0].dtype}")
        width = max(2, table_width(int(positions.max()), cache.block_size))  # export: sizes >= 2
        if tables.shape[1] < width:  # pad with block 0: positions past a row's own are masked
            tables = torch.nn.functional.pad(tables, (0, width - tables.shape[1]))
        return self._run(batch, [tokens, positions, tables[:, :width].contiguous(), *cache.k, *cache.v])

    def _bucket(self, batch: int) -> int:
        return 1 if batch == 1 else 2

    def ready(self, batch: int) -> bool:
        return batch <= MAX_BATCH and super().ready(batch)

    def _rows_label(self, batch: int) -> str:
        return "one paged row" if batch == 1 else f"2-{MAX_BATCH} paged rows"

    def _make_body(self) -> _DecodeBody:
        return _PagedDecodeBody(self.model)

    def _example(self, batch: int) -> tuple[object, ...]:
        batch = self._bucket(batch)
        cfg = self.model.config
        cache = PagedKVCache(cfg, 8, self.block_size, dtype=self.cache_dtype)
        tokens = torch.ones((batch, 1), dtype=torch.int64)
        tables = torch.arange(batch * 4, dtype=torch.int64).view(batch, 4) % 8
        return tokens, tokens.clone(), tables, cache.k, cache.v

    def _dynamic(self, batch: int) -> tuple[object, ...]:
        cfg = self.model.config
        pool = torch.export.Dim("pool_blocks", min=2)
        width = torch.export.Dim("table_width", min=2, max=-(-cfg.context_length // self.block_size) + 1)
        per_layer = [{0: pool}] * cfg.n_layers
        if self._bucket(batch) == 1:
            return None, None, {1: width}, per_layer, per_layer
        rows = torch.export.Dim("rows", min=2, max=MAX_BATCH)
        return {0: rows}, {0: rows}, {0: rows, 1: width}, per_layer, per_layer
