"""Per-output-channel int8 weights, multiplied by one of two kernels (`Int8Weight.layout`):

- layout "vnni": llamita's own (kernels/csrc/q8_vnni.cpp; mm256.cpp for AVX-VNNI and AVX2, the
  same layout and bits), which quantizes the activations to int8 per group of 32 and multiplies
  bytes: with AVX-512 VNNI up to 2x torch's kernel at 1 row (where both are not memory-bound)
  and 2-4.6x at 8 rows (benchmarks/int4_matmul.py), at the cost of that rounding of x. The
  default for bfloat16 and float32 weights with a multiple of 16 rows wherever
  `native.vnni_kernels()` builds and loads a level (its scales are bfloat16 either way);
- layout "torch": `aten._weight_int8pack_mm(x, w_int8, scales)`, which computes
  `x @ (w_int8 * scales[:, None])ᵀ` exactly in x's dtype; everywhere else.

Both hold one scale per output row. GGML Q8_0 keeps its own blocks where a kernel level loads:
layout "vnni_q8b" is the "vnni" codes (the file's own, unchanged) with the file's float16 scale
of every 32 weights (`q8_0_blocks`; the kernel `q8b_vnni_mm` scales each group's integer dot
product by d_w * d_x, llama.cpp's `ggml_vec_dot_q8_0_q8_0` arithmetic), so the weight is exact.
The other GGML formats (Q5_*, Q2_K, Q3_K; Q8_0 where no kernel level loads; Q6_K only where
none loads, since it keeps its own blocks otherwise: kernels/int4.py layout "vnni_q6k") have
one scale per 16 or 32 weights, which the per-row kernels do not take, so their dequantized
values are re-quantized symmetrically per row: half the memory of bfloat16 at a small extra
error whose perplexity cost `docs/quantization.md` measures.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llamita.kernels import native
from llamita.kernels.int4 import kernel_activations

_CHUNK_WEIGHTS = 1 << 22  # rows converted per step: bounds the float32 temporaries to ~16 MiB


@dataclass(frozen=True, eq=False)
class Int8Weight:
    """A linear weight (out_features, in_features): `W[n, k] = w[n, k] * scales[n]`.

    qweight: int8 (out_features, in_features), the codes w: in row order (layout "torch") or in
    q8_vnni.cpp's blocks of 16 rows (layouts "vnni" and "vnni_q8b"; `dequantize_int8` reads
    each); scales: (out_features,) in the compute dtype (layout "torch") or bfloat16 ("vnni");
    for "vnni_q8b" float16 (out_features/16, in_features/32, 16), one per 32 weights of a row
    (`W[n, k] = w[n, k] * scales[n // 16, k // 32, n % 16]`).
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    layout: str = "torch"

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1]

    @property
    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scales.nbytes


VNNI_BLOCK_ROWS = 16  # rows per block of the "vnni" layout (q8_vnni.cpp)


# Compute dtypes whose weights take the "vnni" layout: its scales are bfloat16 either way (the
# kernel reads them so). In float32 that rounds each row's scale once (relative 2^-9, far below
# the rounding of the codes themselves), for a kernel several times faster than torch's.
VNNI_DTYPES = (torch.bfloat16, torch.float32)


def default_layout(out_features: int, dtype: torch.dtype) -> str:
    """The layout a new weight is stored in: "vnni" where one of llamita's kernels loads and can
    take it (bfloat16 or float32 compute, whole 16-row blocks), else "torch"."""
    fits = dtype in VNNI_DTYPES and out_features % VNNI_BLOCK_ROWS == 0
    return "vnni" if fits and native.vnni_kernels() else "torch"


def _vnni_order(q: torch.Tensor) -> torch.Tensor:
    """Codes (N, K) in row order -> q8_vnni.cpp's order: per 16 rows, chunks of 4 k, 16 x 4."""
    n, k = q.shape
    return q.view(n // VNNI_BLOCK_ROWS, VNNI_BLOCK_ROWS, k // 4, 4).transpose(1, 2).reshape(n, k)


def _row_order(q: torch.Tensor) -> torch.Tensor:
    """Inverse of `_vnni_order`."""
    n, k = q.shape
    return q.view(n // VNNI_BLOCK_ROWS, k // 4, VNNI_BLOCK_ROWS, 4).transpose(1, 2).reshape(n, k)


def quantize_int8(
    n: int,
    k: int,
    rows_fn: Callable[[int, int], torch.Tensor],
    dtype: torch.dtype = torch.bfloat16,
    layout: str | None = None,
) -> Int8Weight:
    """Symmetric per-row int8 of a weight produced a slice of rows at a time.

    rows_fn(start, stop) returns rows start..stop of the float weight (float32, (stop-start, k)),
    so a large weight is never expanded whole. Scale = max |w| / 127 per row, codes rounded to
    nearest (ties to even) and clamped to ±127; an all-zero row gets scale 0 and codes 0.
    layout: "vnni" or "torch" (None: `default_layout`); the codes are the same in both, the
    scales are in `dtype` ("torch") or bfloat16 ("vnni").
    """
    layout = layout or default_layout(n, dtype)
    if layout == "vnni":
        if not native.vnni_kernels():
            raise ValueError(f"llamita's int8 kernel is unavailable: {native.vnni_kernels_skipped()}")
        if dtype not in VNNI_DTYPES or n % VNNI_BLOCK_ROWS or k % K_MULTIPLE:
            raise ValueError(
                f"layout 'vnni' needs bfloat16 or float32 compute, rows a multiple of "
                f"{VNNI_BLOCK_ROWS} and columns of {K_MULTIPLE}: {n}x{k} {dtype}"
            )
    elif layout != "torch":
        raise ValueError(f"unknown int8 layout {layout!r}")
    qweight = torch.empty((n, k), dtype=torch.int8)
    scales = torch.empty(n, dtype=torch.float32)
    step = max(1, _CHUNK_WEIGHTS // max(1, k))
    if layout == "vnni":  # whole 16-row blocks per slice, reordered as they are written
        step = max(VNNI_BLOCK_ROWS, step // VNNI_BLOCK_ROWS * VNNI_BLOCK_ROWS)
    for start in range(0, n, step):
        stop = min(n, start + step)
        w = rows_fn(start, stop).float()
        amax = w.abs().amax(dim=1)
        scale = amax / 127
        inv = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
        codes = torch.round(w * inv[:, None]).clamp_(-127, 127).to(torch.int8)
        qweight[start:stop] = _vnni_order(codes) if layout == "vnni" else codes
        scales[start:stop] = scale
    return Int8Weight(qweight, scales.to(torch.bfloat16 if layout == "vnni" else dtype), layout)


Q8_0_BLOCK_BYTES = 34  # GGML Q8_0: float16 d, then 32 int8 codes


def q8_0_blocks(n: int, k: int, raw_fn: Callable[[int, int], torch.Tensor]) -> Int8Weight:
    """A GGML Q8_0 weight (n, k) in its own blocks: layout "vnni_q8b" (module doc), exact.

    raw_fn(start, stop) returns the file bytes of rows start..stop (uint8, (stop-start, k/32*34)),
    asked for in slices of whole 16-row blocks so a large weight is never copied whole twice.
    Needs a kernel level (`native.vnni_kernels()`), n a multiple of 16 and k of 32.
    """
    if not native.vnni_kernels():
        raise ValueError(f"llamita's int8 kernel is unavailable: {native.vnni_kernels_skipped()}")
    if n % VNNI_BLOCK_ROWS or k % K_MULTIPLE or n <= 0:
        raise ValueError(
            f"layout 'vnni_q8b' needs rows a multiple of {VNNI_BLOCK_ROWS} and columns of {K_MULTIPLE}: {n}x{k}"
        )
    groups = k // K_MULTIPLE
    qweight = torch.empty((n, k), dtype=torch.int8)
    scales = torch.empty((n // VNNI_BLOCK_ROWS, groups, VNNI_BLOCK_ROWS), dtype=torch.float16)
    step = max(VNNI_BLOCK_ROWS, _CHUNK_WEIGHTS // k // VNNI_BLOCK_ROWS * VNNI_BLOCK_ROWS)
    for start in range(0, n, step):
        stop = min(n, start + step)
        blocks = raw_fn(start, stop).reshape(stop - start, groups, Q8_0_BLOCK_BYTES)
        d = blocks[..., :2].contiguous().view(torch.float16).view(stop - start, groups)
        codes = blocks[..., 2:].contiguous().view(torch.int8).view(stop - start, k)
        qweight[start:stop] = _vnni_order(codes)
        b0, b1 = start // VNNI_BLOCK_ROWS, stop // VNNI_BLOCK_ROWS
        scales[b0:b1] = d.view(b1 - b0, VNNI_BLOCK_ROWS, groups).transpose(1, 2)
    return Int8Weight(qweight, scales, "vnni_q8b")


def concat_int8(weights: list[Int8Weight] | tuple[Int8Weight, ...]) -> Int8Weight | None:
    """One weight whose output rows are those of `weights` in order (same in_features, scale
    dtype and layout), or None. Rows are independent (one scale each) and a "vnni" weight is
    whole 16-row blocks, so the join is exact and its parts are row slices of it."""
    first = weights[0]
    if len(weights) < 2 or any(
        w.in_features != first.in_features or w.scales.dtype != first.scales.dtype or w.layout != first.layout
        for w in weights
    ):
        return None
    return Int8Weight(torch.cat([w.qweight for w in weights]), torch.cat([w.scales for w in weights]), first.layout)


def int8_linear(x: torch.Tensor, w: Int8Weight, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x (..., in_features) @ Wᵀ -> (..., out_features) in `out_dtype` (None: x's dtype).

    float32 output skips a rounding to bfloat16 where the kernel accumulates in float32 (the
    output projection, whose logits are float32: 8 rows x 49152 logits rounded and widened
    again cost ~0.4 ms of an 8-sequence step)."""
    lead = x.shape[:-1]
    out_dtype = out_dtype or x.dtype
    if w.layout == "vnni":  # float32 out: activations quantized to int8 per 32 (module doc)
        x2 = kernel_activations(x, w.in_features)
        return native.kernel_ops().q8_vnni_mm(x2, w.qweight, w.scales).view(*lead, w.out_features).to(out_dtype)
    if w.layout == "vnni_q8b":
        x2 = kernel_activations(x, w.in_features)
        return native.kernel_ops().q8b_vnni_mm(x2, w.qweight, w.scales).view(*lead, w.out_features).to(out_dtype)
    x2 = x.reshape(-1, w.in_features)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    scales = w.scales if w.scales.dtype == x.dtype else w.scales.to(x.dtype)
    out: torch.Tensor = torch.ops.aten._weight_int8pack_mm(x2, w.qweight, scales)
    return out.reshape(*lead, w.out_features).to(out_dtype)


def dequantize_int8(w: Int8Weight, dtype: torch.dtype, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The weight (or only `rows` of it, e.g. embedding lookups) as dense `dtype`."""
    if w.layout == "vnni_q8b":  # d * w is exact in float32 (11 x 8 significant bits)
        if rows is None and dtype in (torch.bfloat16, torch.float32):  # one pass (portable.cpp)
            return native.kernel_ops().q8b_vnni_dequantize(w.qweight, w.scales, dtype)
        return _dequantize_q8b(w, rows).to(dtype)
    if w.layout == "vnni":
        n, k = w.qweight.shape
        if rows is None and dtype in (torch.bfloat16, torch.float32):  # one pass, same values
            return native.kernel_ops().q8_vnni_dequantize(w.qweight, w.scales, dtype)
        if rows is None:
            q, s = _row_order(w.qweight), w.scales
        else:  # row r is 4-byte pieces at [r // 16, :, r % 16, :] of the blocks
            blocks = w.qweight.view(n // VNNI_BLOCK_ROWS, k // 4, VNNI_BLOCK_ROWS, 4)
            q, s = blocks[rows // VNNI_BLOCK_ROWS, :, rows % VNNI_BLOCK_ROWS].reshape(*rows.shape, k), w.scales[rows]
    else:
        q, s = (w.qweight, w.scales) if rows is None else (w.qweight[rows], w.scales[rows])
    return q.to(dtype) * s.to(dtype).unsqueeze(-1)


def _dequantize_q8b(w: Int8Weight, rows: torch.Tensor | None) -> torch.Tensor:
    """Float32 d * w of a "vnni_q8b" weight, all rows or only `rows` (any shape of ids)."""
    n, k = w.qweight.shape
    if rows is None:  # whole blocks in order: reshapes, no gather
        q = _row_order(w.qweight).view(n, k // K_MULTIPLE, K_MULTIPLE)
        d = w.scales.transpose(1, 2).reshape(n, k // K_MULTIPLE)
        return (q.float() * d.float().unsqueeze(-1)).view(n, k)
    blocks = w.qweight.view(n // VNNI_BLOCK_ROWS, k // 4, VNNI_BLOCK_ROWS, 4)
    q = blocks[rows // VNNI_BLOCK_ROWS, :, rows % VNNI_BLOCK_ROWS].reshape(*rows.shape, k // K_MULTIPLE, K_MULTIPLE)
    d = w.scales[rows // VNNI_BLOCK_ROWS, :, rows % VNNI_BLOCK_ROWS]
    return (q.float() * d.float().unsqueeze(-1)).reshape(*rows.shape, k)


# The kernel reads the reduction dimension in vector-sized steps: with K = 4 or 40 it returned
# NaN/inf and with K = 4 it crashed the process, while every multiple of 32 tried (32 to 14336,
# 1 to 49152 rows) was right. Weights whose rows are not a multiple of this stay dense.
K_MULTIPLE = 32


def int8_shape_ok(out_features: int, in_features: int) -> bool:
    return in_features % K_MULTIPLE == 0 and out_features > 0


@functools.lru_cache(maxsize=1)
def int8_supported() -> bool:
    """True if torch's int8 weight-only CPU matmul runs here and computes what we expect."""
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randint(-127, 128, (16, 64), generator=g, dtype=torch.int8)
        s = torch.rand(16, generator=g).to(torch.bfloat16)
        x = torch.randn(3, 64, generator=g).to(torch.bfloat16)
        got = torch.ops.aten._weight_int8pack_mm(x, w, s).float()
    except (RuntimeError, NotImplementedError, AttributeError):
        return False
    want = x.float() @ (w.float() * s.float()[:, None]).T
    return bool(((got - want).abs().max() <= 1e-2 * want.abs().max()).item())
