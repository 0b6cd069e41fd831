"""Linear layers over compact weights, drop-in for `nn.Linear(bias=False)` in the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamita.kernels.int4 import Int4Weight, dequantize_int4, int4_linear
from llamita.kernels.int8 import Int8Weight, dequantize_int8, int8_linear

# From this many input rows on (prompt prefill), expanding the weight to bfloat16 and using a
# dense matmul beats the int4 (and int8) kernel, whose cost grows with every row (benchmarks/int4_matmul.py:
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


class Int8Linear(nn.Module):
    """y = x Wᵀ with W as int8 codes and one scale per output row (GGML Q5/Q6/Q8/Q2/Q3 weights).

    Like Int4Linear, many-row inputs (prefill) expand the weight and use a dense matmul.
    """

    def __init__(self, weight: Int8Weight) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.register_buffer("qweight", weight.qweight)
        self.register_buffer("scales", weight.scales)

    @property
    def weight_int8(self) -> Int8Weight:
        return Int8Weight(self.qweight, self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows >= DENSE_MIN_ROWS:
            return F.linear(x, dequantize_int8(self.weight_int8, x.dtype))
        return int8_linear(x, self.weight_int8)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per row"
