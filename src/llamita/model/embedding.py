"""Token embeddings over compact tables: decode only the rows a step looks up."""

from __future__ import annotations

import torch
from torch import nn

from llamita.kernels.encoded_rows import EncodedRows
from llamita.kernels.int8 import Int8Weight, dequantize_int8


class EncodedEmbedding(nn.Module):
    """An embedding whose table stays in its GGUF encoding (e.g. Q4_K), decoded per lookup.

    The values are exactly those of dequantizing the whole table, rounded to `dtype`.
    """

    data: torch.Tensor  # a buffer (registered in __init__)

    def __init__(self, table: EncodedRows, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = table.n_rows, table.dim
        self.dtype = dtype
        self._decode = table.decode
        self.register_buffer("data", table.data)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return EncodedRows(self.data, self.embedding_dim, self._decode).rows(ids, self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, encoded {self.data.nbytes / 2**20:.1f} MiB"


class Int8Embedding(nn.Module):
    """Embedding rows read from an int8 table (the tied output projection's weight): per row,
    or GGML Q8_0 in its own blocks (layout "vnni_q8b": each row exactly the file's d * q).

    With tied embeddings the output matmul needs the table in int8 anyway; looking tokens up in
    that same copy keeps one table in memory instead of two.
    """

    qweight: torch.Tensor  # buffers (registered in __init__)
    scales: torch.Tensor

    def __init__(self, weight: Int8Weight, dtype: torch.dtype | None = None) -> None:
        """dtype: of the looked-up rows (None: the scales' dtype; a "vnni" table keeps bfloat16
        scales under a float32 model)."""
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.out_features, weight.in_features
        self.layout = weight.layout
        self.dtype = dtype or (torch.bfloat16 if weight.layout == "vnni_q8b" else weight.scales.dtype)
        self.register_buffer("qweight", weight.qweight)
        self.register_buffer("scales", weight.scales)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return dequantize_int8(Int8Weight(self.qweight, self.scales, self.layout), self.dtype, ids)

    def extra_repr(self) -> str:
        kind = "Q8_0 blocks of 32" if self.layout == "vnni_q8b" else "per row"
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 {kind}"
