"""Linear layers over compact weights, drop-in for `nn.Linear(bias=False)` in the model."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llamita.kernels import native
from llamita.kernels.int4 import VNNI_BLOCK_ROWS, VNNI_LAYOUTS, Int4Weight, concat_int4, dequantize_int4, int4_linear
from llamita.kernels.int8 import Int8Weight, concat_int8, dequantize_int8, int8_linear

# From this many input rows on (prompt prefill), expanding the weight and using a dense matmul
# beats the int4 (and int8) kernel, whose cost grows with every row. Measured per kernel level
# (docs/performance.md): with AVX-512 (torch's kernel or llamita's VNNI one, against bfloat16
# F.linear) the crossover was 128 rows for every shape measured, 576x576 to 14336x4096
# (benchmarks/int4_matmul.py); on AVX2 / AVX-VNNI the dense matmul is float32, and llamita's
# 256-bit kernels stayed 1.5-4x faster than dequantize + F.linear at every count measured, 16 to
# 2048 rows (576x576 to 4096x4096, 1 and 2 threads): there the kernel runs prefill too.
DENSE_MIN_ROWS = 128
_DENSE_MIN_ROWS_BY_LEVEL = {"avx_vnni": sys.maxsize, "avx2": sys.maxsize}
# The output head (the model's `lm_head`, tied or not) expands its weight from this many rows on
# at every level, for accuracy rather than speed: the kernels round the head's activations to
# int8 per 32, and on AVX2 that rounding alone was 28 % of the default model's mean KL divergence
# from float32 (docs/performance.md "Accuracy"); float32 there takes 1.7-2.5x the kernel's time
# from 512 down to 128 rows (benchmarks/kl_head.py). Many rows reach the head only when
# every position's logits are wanted (perplexity, prompt logprobs, echo); prefill for generation
# runs it on the last row, decode on one row a sequence.
HEAD_DENSE_MIN_ROWS = 128


def dense_min_rows(head: bool = False) -> int:
    """Input rows from which Int4Linear / Int8Linear expand their weight for a dense matmul, for
    the kernel level this process runs (`native.kernel_level()`); `head`: for the output head."""
    rows = _DENSE_MIN_ROWS_BY_LEVEL.get(native.kernel_level() or "", DENSE_MIN_ROWS)
    return min(rows, HEAD_DENSE_MIN_ROWS) if head else rows


class Int4Linear(nn.Module):
    """y = x Wᵀ with W held in a packed int4 CPU format (a GGUF Q4_0/Q4_1/Q4_K weight).

    Decode steps (few rows) read only the 4-bit codes; prefill expands the weight on the fly.
    """

    packed: torch.Tensor  # buffers (registered in __init__)
    scales_and_zeros: torch.Tensor

    def __init__(self, weight: Int4Weight, head: bool = False) -> None:
        """head: this is the model's output projection (`dense_min_rows(head=True)`)."""
        super().__init__()
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.group_size, self.layout = weight.group_size, weight.layout
        self.head = head
        # Buffers, so the module's memory shows up in state_dict / buffers() accounting.
        self.register_buffer("packed", weight.packed)
        self.register_buffer("scales_and_zeros", weight.scales_and_zeros)

    @property
    def weight_int4(self) -> Int4Weight:
        return Int4Weight(
            self.packed, self.scales_and_zeros, self.out_features, self.in_features, self.group_size, self.layout
        )

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """out_dtype: the result's dtype (None: x's); float32 keeps the kernel's accumulators."""
        rows = x.numel() // self.in_features
        if rows >= dense_min_rows(self.head):
            return F.linear(x, dequantize_int4(self.weight_int4, x.dtype)).to(out_dtype or x.dtype)
        return int4_linear(x, self.weight_int4, out_dtype)

    def extra_repr(self) -> str:
        head = ", output head" if self.head else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group {self.group_size} ({self.layout}){head}"


class Int8Linear(nn.Module):
    """y = x Wᵀ with W as int8 codes and one scale per output row (GGML Q5/Q6/Q8/Q2/Q3 weights),
    or GGML Q8_0 in its own blocks of 32 (layout "vnni_q8b", kernels/int8.py).

    Like Int4Linear, many-row inputs (prefill) expand the weight and use a dense matmul.
    """

    qweight: torch.Tensor  # buffers (registered in __init__)
    scales: torch.Tensor

    def __init__(self, weight: Int8Weight, head: bool = False) -> None:
        """head: as in Int4Linear."""
        super().__init__()
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.layout = weight.layout
        self.head = head
        self.register_buffer("qweight", weight.qweight)
        self.register_buffer("scales", weight.scales)

    @property
    def weight_int8(self) -> Int8Weight:
        return Int8Weight(self.qweight, self.scales, self.layout)

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """out_dtype as in Int4Linear.forward."""
        rows = x.numel() // self.in_features
        if rows >= dense_min_rows(self.head):
            return F.linear(x, dequantize_int8(self.weight_int8, x.dtype)).to(out_dtype or x.dtype)
        return int8_linear(x, self.weight_int8, out_dtype)

    def extra_repr(self) -> str:
        kind = "Q8_0 blocks" if self.layout == "vnni_q8b" else "per row"
        head = ", output head" if self.head else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 {kind} ({self.layout}){head}"


class FusedLinear(nn.Module):
    """Several compact linear layers over the same input as one matmul: `forward` returns each
    part's output, split from one kernel call over their concatenated rows.

    Batch-1 decode of a small model pays a fixed cost per kernel call (a 576x576 int4 matmul
    reads 207 KB, ~15 us of memory traffic, and takes ~20 us), so q/k/v as one call and gate/up
    as one cut a layer's seven calls to four, as gpt-fast's wqkv and vLLM's QKVParallelLinear
    do. The parts keep working on their own (LoRA, fine-tuning and the glass views address
    them by name): `fuse_linears` re-points their codes at views of the fused rows, so no
    memory is added. Each output element is computed exactly as by its part alone.
    """

    parts: tuple[nn.Module, ...]  # held outside the module tree (set in __init__)

    def __init__(self, inner: Int4Linear | Int8Linear, parts: Sequence[Int4Linear] | Sequence[Int8Linear]) -> None:
        super().__init__()
        self.inner = inner
        self.sizes = [p.out_features for p in parts]
        # Held outside the module tree (no second registration of the same weights).
        self.__dict__["parts"] = tuple(parts)

    def serves(self, *parts: nn.Module) -> bool:
        """True while `parts` are still the modules this was built from (LoRA or fine-tuning
        wrap or replace them, and then their own forward must run)."""
        return len(parts) == len(self.parts) and all(a is b for a, b in zip(parts, self.parts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        joined: torch.Tensor = self.inner(x)
        return tuple(joined.split(self.sizes, dim=-1))


def fuse_linears(parts: Sequence[nn.Module]) -> FusedLinear | None:
    """A FusedLinear over `parts` when they are all Int4Linear (whose packed blocks can be
    joined, see `concat_int4`) or all Int8Linear over the same input; else None (dense layers
    stay as they are: they are the float reference, and large dense matmuls gain nothing)."""
    # Exactly these types: a subclass (e.g. a wrapper) may compute something else.
    int4 = [p for p in parts if type(p) is Int4Linear]
    int8 = [p for p in parts if type(p) is Int8Linear]
    if len(int4) == len(parts):
        w4 = concat_int4([p.weight_int4 for p in int4])
        if w4 is None:
            return None
        start = 0
        for p in int4:  # codes become row views of the joined ones, and so do the scales
            p.packed = w4.packed[start : start + p.out_features]
            if w4.layout in VNNI_LAYOUTS:
                # Joined along 16-row blocks, so a part's are a contiguous slice. Not small:
                # a bfloat16 scale (and min) per 32 weights is a fifth of the 4-bit codes, 0.6 GB
                # of an 8B's q/k/v and gate/up held twice before.
                blocks = slice(start // VNNI_BLOCK_ROWS, (start + p.out_features) // VNNI_BLOCK_ROWS)
                p.scales_and_zeros = w4.scales_and_zeros[blocks]
            start += p.out_features
        return FusedLinear(Int4Linear(w4), int4)
    if len(int8) == len(parts):
        w8 = concat_int8([p.weight_int8 for p in int8])
        if w8 is None:
            return None
        start = 0
        for q in int8:
            # "vnni_q8b" scales are per 16-row block (whole blocks, as the codes): a block slice.
            per = VNNI_BLOCK_ROWS if w8.layout == "vnni_q8b" else 1
            q.qweight, q.scales = (
                w8.qweight[start : start + q.out_features],
                w8.scales[start // per : (start + q.out_features) // per],
            )
            start += q.out_features
        return FusedLinear(Int8Linear(w8), int8)
    return None
