"""Linear layers over compact weights, drop-in for `nn.Linear(bias=False)` in the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamita.kernels.int4 import Int4Weight, dequantize_int4, int4_linear

# From this many input rows on (prompt prefill), expanding the weight to bfloat16 and using a
# dense matmul beats the int4 kernel, whose cost grows with every row (benchmarks/int4_matmul.py:
# the crossover was 128 rows for every shape measured, 576x576 to 14336x4096).
DENSE_MIN_ROWS = 128


class Int4Linear(nn.Module):
    """y = x Wᵀ with W held in torch's packed int4 CPU format (a GGUF Q4_0/Q4_1/Q4_K weight).

    Decode steps (few rows) read only the 4-bit codes; prefill expands the weight on the fly.
    """

    def __init__(self, weight: Int4Weight) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.group_size = weight.group_size
        # Buffers, so the module's memory shows up in state_dict / buffers() accounting.
        self.register_buffer("packed", weight.packed)
        self.register_buffer("scales_and_zeros", weight.scales_and_zeros)

    @property
    def weight_int4(self) -> Int4Weight:
        return Int4Weight(self.packed, self.scales_and_zeros, self.out_features, self.in_features,
                          self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows >= DENSE_MIN_ROWS:
            return F.linear(x, dequantize_int4(self.weight_int4, x.dtype))
        return int4_linear(x, self.weight_int4)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group {self.group_size}"
