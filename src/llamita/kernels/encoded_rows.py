"""A table kept in its file encoding, decoded only at the rows looked up (token embeddings).

An embedding lookup reads a few rows per step, so a quantized `token_embd` need never be
expanded: the bytes stay as in the GGUF file (Q4_K: 4.5 bits a weight instead of 16) and each
lookup decodes just its rows, exactly as a full dequantization would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# (n, row_bytes) uint8 -> (n, dim) float32, bit-exact with decoding the whole table.
RowDecoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, eq=False)
class EncodedRows:
    """data: uint8 (n_rows, row_bytes), each row one encoded table row of `dim` values."""

    data: torch.Tensor
    dim: int
    decode: RowDecoder

    @property
    def n_rows(self) -> int:
        return self.data.shape[0]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows `ids` (any shape) -> (*ids.shape, dim) in `dtype`."""
        flat = ids.reshape(-1)
        out = self.decode(self.data.index_select(0, flat)).to(dtype)
        return out.reshape(*ids.shape, self.dim)
