"""GGML tensor types: block sizes, and vectorized torch (de)quantizers for GGUF weights.

Bit layouts follow docs/llama-reference.md §6 (ggml `ggml-common.h` / `ggml-quants.c`). Every dequantizer
computes in float32 in the same order as gguf-py's numpy reference (`gguf.quants`), so results
are bit-identical to `gguf.quants.dequantize`; e.g. Q4_0 is `d * (q - 8)`, not `d*q - 8*d`, and
the K-quants form the sub-block scale `d * sc` first, then `(d*sc) * q - dmin*m`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

import torch

from llamita.errors import ModelFileError, UnsupportedModelError
from llamita.weights import kquants
from llamita.weights.kquants import QK_K  # noqa: F401  (weights per K-quant super-block)

# Weights per dequantization chunk: bounds the float32/uint8 temporaries of a large tensor to a
# few times this size (about 4 MiB of output each) while keeping per-chunk Python overhead small.
_CHUNK_WEIGHTS = 1 << 20


class GGMLType(enum.IntEnum):
    """ggml tensor type ids as stored in GGUF tensor infos (gguf-py `GGMLQuantizationType`)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


# (weights per block, bytes per block), as gguf-py's GGML_QUANT_SIZES.
BLOCK_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 40),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.IQ2_XXS: (256, 66),
    GGMLType.IQ2_XS: (256, 74),
    GGMLType.IQ3_XXS: (256, 98),
    GGMLType.IQ1_S: (256, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (256, 110),
    GGMLType.IQ2_S: (256, 82),
    GGMLType.IQ4_XS: (256, 136),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, 56),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (256, 54),
    GGMLType.TQ2_0: (256, 66),
    GGMLType.MXFP4: (32, 17),
    GGMLType.NVFP4: (64, 36),
    GGMLType.Q1_0: (128, 18),
}

_FLOAT_TYPES: dict[GGMLType, torch.dtype] = {
    GGMLType.F32: torch.float32,
    GGMLType.F16: torch.float16,
    GGMLType.BF16: torch.bfloat16,
}


# --------------------------------------------------------------------------- helpers


def _as_type(ggml_type: GGMLType | int) -> GGMLType:
    try:
        return GGMLType(int(ggml_type))
    except ValueError:
        raise UnsupportedModelError(f"unknown ggml tensor type id {int(ggml_type)}") from None


def _reinterpret(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """View uint8 bytes (..., k*itemsize) as `dtype` (..., k), copying only if misaligned."""
    t = t.contiguous()
    if t.storage_offset() % dtype.itemsize:
        t = t.clone()
    return t.view(dtype)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(n, 2) uint8 holding little-endian fp16 -> (n, 1) float32 (exact)."""
    return _reinterpret(b, torch.float16).float()


def _bits(x: torch.Tensor, shifts: range | tuple[int, ...], width: int, dim: int = -2) -> torch.Tensor:
    """uint8 x -> the `width`-bit fields `(x >> s) & mask` for each shift s, stacked on `dim`.

    Scalar shifts on each field beat one broadcast tensor shift several times on CPU.
    """
    mask = (1 << width) - 1
    fields = []
    for s in shifts:
        f = x >> s if s else x
        fields.append(f if s + width == 8 else f & mask)
    return torch.stack(fields, dim=dim)


def _nibbles(x: torch.Tensor) -> torch.Tensor:
    """(..., k) uint8 -> (..., 2, k): low nibbles, then high nibbles."""
    return _bits(x, (0, 4), 4)


# --------------------------------------------------------------------------- dequantizers
# Each decodes blocks (n, bytes per block) uint8 into out (n, weights per block) float32.
# Integer quants are finished in the uint8/int8 domain (exact) and converted by copying into
# `out`; the float32 scale arithmetic then runs in place, in gguf-py's order.


def _dequant_q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(blocks[:, 2:].view(torch.int8))
    out.mul_(_f16(blocks[:, :2]))


def _dequant_q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    n = blocks.shape[0]
    q = _nibbles(blocks[:, 2:]).view(n, 32).view(torch.int8).sub_(8)
    out.copy_(q)
    out.mul_(_f16(blocks[:, :2]))


def _dequant_q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    n = blocks.shape[0]
    out.copy_(_nibbles(blocks[:, 4:]).view(n, 32))
    out.mul_(_f16(blocks[:, 0:2])).add_(_f16(blocks[:, 2:4]))


def _q5_values(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """qh (n, 4) = u32 LE high bits, qs (n, 16) nibbles -> q (n, 32) uint8 in 0..31."""
    n = qs.shape[0]
    hi = _bits(qh, range(8), 1, dim=-1).view(n, 32)  # bit j of the u32 -> weight j
    return _nibbles(qs).view(n, 32).bitwise_or_(hi << 4)


def _dequant_q5_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(_q5_values(blocks[:, 2:6], blocks[:, 6:]).view(torch.int8).sub_(16))
    out.mul_(_f16(blocks[:, :2]))


def _dequant_q5_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(_q5_values(blocks[:, 4:8], blocks[:, 8:]))
    out.mul_(_f16(blocks[:, 0:2])).add_(_f16(blocks[:, 2:4]))


def _dequant_q2_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    n = blocks.shape[0]
    scales = blocks[:, :16]
    d, dmin = _f16(blocks[:, 80:82]), _f16(blocks[:, 82:84])
    dl = (d * (scales & 0x0F).float()).unsqueeze(-1)  # (n, 16, 1)
    ml = (dmin * (scales >> 4).float()).unsqueeze(-1)
    # Two halves of 32 bytes; shifts 0,2,4,6 each yield 32 weights = two 16-weight sub-blocks.
    q = _bits(blocks[:, 16:80].reshape(n, 2, 32), (0, 2, 4, 6), 2)  # (n, 2, 4, 32)
    o = out.view(n, 16, 16)
    o.copy_(q.view(n, 16, 16))
    o.mul_(dl).sub_(ml)


def _dequant_q3_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    n = blocks.shape[0]
    hmask, qs, s = blocks[:, :32], blocks[:, 32:96], blocks[:, 96:108]
    d = _f16(blocks[:, 108:110])
    # 6-bit scales: low 4 bits from s[0:8] (low then high nibbles), high 2 bits from s[8:12].
    low = _nibbles(s[:, :8]).view(n, 16)
    high = _bits(s[:, 8:12], (0, 2, 4, 6), 2).view(n, 16)
    sc = low.bitwise_or_(high << 4).view(torch.int8).sub_(32)
    dl = (d * sc.float()).unsqueeze(-1)  # (n, 16, 1)
    # 2-bit values, plus 4 where hmask bit b (b = 4*half + shift step) is set, minus 4.
    ql = _bits(qs.reshape(n, 2, 32), (0, 2, 4, 6), 2).view(n, 8, 32)
    qh = _bits(hmask, range(8), 1)  # (n, 8, 32)
    q = ql.bitwise_or_(qh << 2).view(torch.int8).sub_(4)
    o = out.view(n, 16, 16)
    o.copy_(q.view(n, 16, 16))
    o.mul_(dl)


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K packed scales (n, 12) -> 6-bit scales (n, 8) and mins (n, 8), uint8."""
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _k4_finish(blocks: torch.Tensor, q: torch.Tensor, out: torch.Tensor) -> None:
    """out = (d*sc) * q - dmin*m per 32-weight sub-block; q (n, 8, 32) uint8."""
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    o = out.view(n, 8, 32)
    o.copy_(q)
    o.mul_((d * sc.float()).unsqueeze(-1)).sub_((dmin * mn.float()).unsqueeze(-1))


def _dequant_q4_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    n = blocks.shape[0]
    # 4 chunks of 32 bytes; chunk c: low nibbles = sub-block 2c, high nibbles = 2c+1.
    q = _nibbles(blocks[:, 16:].reshape(n, 4, 32)).view(n, 8, 32)
    _k4_finish(blocks, q, out)


def _dequant_q5_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    n = blocks.shape[0]
    qh = _bits(blocks[:, 16:48], range(8), 1)  # (n, 8, 32): bit j of qh[l] -> sub-block j
    q = _nibbles(blocks[:, 48:].reshape(n, 4, 32)).view(n, 8, 32)
    _k4_finish(blocks, q.bitwise_or_(qh << 4), out)


def _dequant_q6_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    n = blocks.shape[0]
    ql, qh, sc = blocks[:, :128], blocks[:, 128:192], blocks[:, 192:208]
    d = _f16(blocks[:, 208:210])
    dl = (d * sc.view(torch.int8).float()).unsqueeze(-1)  # (n, 16, 1)
    # Per 128-weight half: low nibbles of ql[0:64] are weights 0..63, high nibbles 64..127;
    # qh[l] bit pairs (0,2,4,6) are the top 2 bits of weights l, l+32, l+64, l+96.
    lo = _nibbles(ql.reshape(n, 2, 64)).view(n, 2, 128)
    hi = _bits(qh.reshape(n, 2, 32), (0, 2, 4, 6), 2).view(n, 2, 128)
    q = lo.bitwise_or_(hi << 4).view(torch.int8).sub_(32)
    o = out.view(n, 16, 16)
    o.copy_(q.view(n, 16, 16))
    o.mul_(dl)


_DEQUANTIZERS: dict[GGMLType, Callable[[torch.Tensor, torch.Tensor], None]] = {
    GGMLType.Q8_0: _dequant_q8_0,
    GGMLType.Q4_0: _dequant_q4_0,
    GGMLType.Q4_1: _dequant_q4_1,
    GGMLType.Q5_0: _dequant_q5_0,
    GGMLType.Q5_1: _dequant_q5_1,
    GGMLType.Q2_K: _dequant_q2_k,
    GGMLType.Q3_K: _dequant_q3_k,
    GGMLType.Q4_K: _dequant_q4_k,
    GGMLType.Q5_K: _dequant_q5_k,
    GGMLType.Q6_K: _dequant_q6_k,
}

SUPPORTED: frozenset[GGMLType] = frozenset(_FLOAT_TYPES) | frozenset(_DEQUANTIZERS)


# --------------------------------------------------------------------------- public API


def tensor_nbytes(ggml_type: GGMLType | int, n_elements: int) -> int:
    """Bytes a tensor of `n_elements` weights of `ggml_type` occupies in a GGUF file.

    Works for every known type, supported or not (so a loader can skip over tensors). Raises
    ModelFileError if `n_elements` is not a whole number of blocks.
    """
    t = _as_type(ggml_type)
    block, nbytes = BLOCK_SIZES[t]
    if n_elements < 0 or n_elements % block:
        raise ModelFileError(f"{n_elements} elements is not a whole number of {t.name} blocks of {block} weights")
    return n_elements // block * nbytes


def _check(raw: torch.Tensor, t: GGMLType, shape: tuple[int, ...]) -> None:
    if raw.dtype != torch.uint8 or raw.dim() != 1:
        raise TypeError(f"raw must be a 1-D uint8 tensor, got {raw.dtype} of shape {tuple(raw.shape)}")
    block = BLOCK_SIZES[t][0]
    row = shape[-1] if shape else 1
    if any(s < 0 for s in shape) or row % block:
        raise ModelFileError(
            f"{t.name} tensor of shape {shape}: the last dimension must be a multiple of the block size {block}"
        )
    expected = tensor_nbytes(t, math.prod(shape))
    if raw.numel() != expected:
        raise ModelFileError(
            f"{t.name} tensor of shape {shape} needs {expected} bytes but {raw.numel()} were given "
            "(truncated or corrupt file?)"
        )


def dequantize(
    raw: torch.Tensor,
    ggml_type: GGMLType | int,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Decode a GGUF tensor's bytes into a new tensor of `shape` and `dtype`.

    raw: 1-D uint8 tensor holding exactly the tensor's bytes; only read, never written (it may
    view a read-only memmap). shape: torch order (GGUF `ne` reversed), last dim contiguous.
    Values are computed in float32 bit-exactly as gguf-py does, then rounded once to `dtype`.
    The result lives on raw's device. Quantized tensors are decoded a chunk of blocks at a time,
    so temporaries stay a few times the chunk size (none full-size beyond the output itself).
    """
    t = _as_type(ggml_type)
    if t not in SUPPORTED:
        names = ", ".join(s.name for s in sorted(SUPPORTED))
        raise UnsupportedModelError(
            f"tensor type {t.name} (ggml type {int(t)}) is not supported; supported types: {names}"
        )
    shape = tuple(int(s) for s in shape)
    _check(raw, t, shape)

    if t in _FLOAT_TYPES:
        return _reinterpret(raw, _FLOAT_TYPES[t]).to(dtype, copy=True).reshape(shape)

    block, nbytes = BLOCK_SIZES[t]
    kernel = _DEQUANTIZERS[t]
    n_blocks = raw.numel() // nbytes
    blocks = raw.view(n_blocks, nbytes)
    out = torch.empty((n_blocks, block), dtype=dtype, device=raw.device)
    step = max(1, _CHUNK_WEIGHTS // block)
    # float32 output is written in place; other dtypes go through one reused float32 buffer.
    scratch = None
    if dtype != torch.float32:
        scratch = torch.empty((min(step, n_blocks), block), device=raw.device)
    for start in range(0, n_blocks, step):
        chunk = blocks[start : start + step]
        if scratch is None:
            kernel(chunk, out[start : start + step])
        else:
            buf = scratch[: chunk.shape[0]]
            kernel(chunk, buf)
            out[start : start + step] = buf
    return out.view(shape)


# --------------------------------------------------------------------------- quantizers
# Byte-exact ports of gguf-py's numpy quantizers (ggml's reference quantize_row_*_ref).
# Each maps blocks (n, weights per block) float32 -> (n, bytes per block) uint8.


def _half_bytes(x: torch.Tensor) -> torch.Tensor:
    """(n, 1) float32 -> (n, 2) uint8: little-endian fp16 (round to nearest even)."""
    return x.to(torch.float16).view(torch.uint8)


def _safe_recip(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, 0.0, 1.0 / d)


def _absmax_signed(b: torch.Tensor) -> torch.Tensor:
    """Per-row value of largest magnitude, keeping its sign (first one on ties), (n, 1)."""
    return torch.gather(b, 1, b.abs().argmax(dim=1, keepdim=True))


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """q (n, 32) uint8 in 0..15 -> (n, 16): weight j in the low nibble, j+16 in the high."""
    return q[:, :16] | (q[:, 16:] << 4)


def _pack_high_bits(q: torch.Tensor) -> torch.Tensor:
    """q (n, 32) uint8 in 0..31 -> (n, 4) bytes of the u32 LE whose bit j is bit 4 of q[j]."""
    n = q.shape[0]
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=q.device)
    return ((q >> 4).reshape(n, 4, 8) * weights).sum(dim=-1, dtype=torch.uint8)


def _quant_q8_0(b: torch.Tensor) -> torch.Tensor:
    d = b.abs().amax(dim=1, keepdim=True) / 127
    v = b * _safe_recip(d)
    # Round half away from zero exactly as gguf's np_roundf (not torch.round's half-to-even).
    a = v.abs()
    fl = a.floor()
    qs = v.sign() * (fl + (2 * (a - fl)).floor())
    return torch.cat([_half_bytes(d), qs.to(torch.int8).view(torch.uint8)], dim=1)


def _quant_q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _absmax_signed(b) / -8
    q = (b * _safe_recip(d) + 8.5).trunc().clamp_(0, 15).to(torch.uint8)
    return torch.cat([_half_bytes(d), _pack_nibbles(q)], dim=1)


def _quant_q4_1(b: torch.Tensor) -> torch.Tensor:
    mx, mn = b.amax(dim=1, keepdim=True), b.amin(dim=1, keepdim=True)
    d = (mx - mn) / 15
    q = ((b - mn) * _safe_recip(d) + 0.5).trunc().clamp_(0, 15).to(torch.uint8)
    return torch.cat([_half_bytes(d), _half_bytes(mn), _pack_nibbles(q)], dim=1)


def _quant_q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _absmax_signed(b) / -16
    q = (b * _safe_recip(d) + 16.5).trunc().clamp_(0, 31).to(torch.uint8)
    return torch.cat([_half_bytes(d), _pack_high_bits(q), _pack_nibbles(q & 0x0F)], dim=1)


def _quant_q5_1(b: torch.Tensor) -> torch.Tensor:
    mx, mn = b.amax(dim=1, keepdim=True), b.amin(dim=1, keepdim=True)
    d = (mx - mn) / 31
    q = ((b - mn) * _safe_recip(d) + 0.5).trunc().clamp_(0, 31).to(torch.uint8)
    return torch.cat([_half_bytes(d), _half_bytes(mn), _pack_high_bits(q), _pack_nibbles(q & 0x0F)], dim=1)


def _quant_bf16(b: torch.Tensor) -> torch.Tensor:
    # ggml_compute_fp32_to_bf16: quiet NaNs, then round to nearest even on the top 16 bits.
    n = b.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    n = torch.where((n & 0x7FFFFFFF) > 0x7F800000, (n & 0xFFFF0000) | (64 << 16), n)
    n = (n + (0x7FFF + ((n >> 16) & 1))) >> 16
    return n.to(torch.int32).to(torch.int16).view(torch.uint8)


_QUANTIZERS: dict[GGMLType, Callable[[torch.Tensor], torch.Tensor]] = {
    GGMLType.F32: lambda b: b.view(torch.uint8),
    GGMLType.F16: lambda b: b.to(torch.float16).view(torch.uint8),
    GGMLType.BF16: _quant_bf16,
    GGMLType.Q8_0: _quant_q8_0,
    GGMLType.Q4_0: _quant_q4_0,
    GGMLType.Q4_1: _quant_q4_1,
    GGMLType.Q5_0: _quant_q5_0,
    GGMLType.Q5_1: _quant_q5_1,
    # K-quants: llama.cpp's quantize_row_q*_K_ref (no importance matrix), see kquants.py.
    GGMLType.Q2_K: kquants.quantize_q2_k,
    GGMLType.Q3_K: kquants.quantize_q3_k,
    GGMLType.Q4_K: kquants.quantize_q4_k,
    GGMLType.Q5_K: kquants.quantize_q5_k,
    GGMLType.Q6_K: kquants.quantize_q6_k,
}

QUANTIZABLE: frozenset[GGMLType] = frozenset(_QUANTIZERS)


def quantize(x: torch.Tensor, ggml_type: GGMLType | int) -> torch.Tensor:
    """Encode `x` (any shape, last dim a multiple of the block size) as GGUF bytes.

    Returns a new 1-D uint8 tensor, the layout `dequantize` reads. `x` is first converted to
    float32. F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 are byte-identical to
    `gguf.quants.quantize(x.float().numpy(), ggml_type)`; Q2_K, Q3_K, Q4_K, Q5_K and Q6_K to
    llama.cpp's `quantize_row_q*_K_ref`, i.e. `llama-quantize` without an importance matrix
    (finite inputs; see kquants.py). Other types cannot be produced.
    """
    t = _as_type(ggml_type)
    if t not in QUANTIZABLE:
        names = ", ".join(s.name for s in sorted(QUANTIZABLE))
        raise UnsupportedModelError(f"cannot quantize to {t.name}; supported: {names}")
    block = BLOCK_SIZES[t][0]
    row = x.shape[-1] if x.dim() else 1
    if row % block:
        raise ValueError(f"last dimension {row} is not a multiple of the {t.name} block size {block}")
    blocks = x.detach().reshape(-1, block)
    encode = _QUANTIZERS[t]
    out = torch.empty((blocks.shape[0], BLOCK_SIZES[t][1]), dtype=torch.uint8, device=x.device)
    step = max(1, _CHUNK_WEIGHTS // block)
    for start in range(0, blocks.shape[0], step):
        chunk = blocks[start : start + step].to(torch.float32).contiguous()
        out[start : start + step] = encode(chunk)
    return out.view(-1)


# --------------------------------------------------------------------------- 4-bit as affine
# Q4_0, Q4_1 and Q4_K are affine per 32 weights in the same 4-bit code q: W = (q - 8) * scale +
# zero. This is the form torch's packed int4 kernel takes (kernels/int4.py), so those weights
# need never be expanded. Each decoder maps blocks (nb, bytes per block) to codes (nb, weights
# per block) uint8 in weight order and float32 scale, zero (nb, weights per block // 32).


def _affine_q4_0(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # W = d * (q - 8): scale d, zero 0.
    qs = blocks[:, 2:]
    codes = torch.cat([qs & 0x0F, qs >> 4], dim=1)  # weights 0..15 low nibbles, 16..31 high
    d = _f16(blocks[:, 0:2])
    return codes, d, torch.zeros_like(d)


def _affine_q4_1(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # W = d * q + m = d * (q - 8) + (m + 8d): scale d, zero m + 8d.
    qs = blocks[:, 4:]
    codes = torch.cat([qs & 0x0F, qs >> 4], dim=1)
    d, m = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    return codes, d, m + 8 * d


def _q4_k_parts(blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Q4_K blocks (nb, 144) -> codes (nb, 256) uint8 in weight order, 6-bit scales sc and
    mins mn (nb, 8) uint8, and d, dmin (nb, 1) float16: W = (d*sc_j) * q - dmin*mn_j."""
    nb = blocks.shape[0]
    qs = blocks[:, 16:].reshape(nb, 4, 32)  # chunk c: low nibbles sub-block 2c, high 2c+1
    codes = torch.stack([qs & 0x0F, qs >> 4], dim=2).reshape(nb, 256)
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    d, dmin = (_reinterpret(blocks[:, i : i + 2], torch.float16) for i in (0, 2))
    return codes, sc, mn, d, dmin


def _affine_q4_k(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Sub-block j: W = (d*sc_j) * q - dmin*mn_j = (d*sc_j) * (q - 8) + (8*d*sc_j - dmin*mn_j).
    codes, sc, mn, d, dmin = _q4_k_parts(blocks)
    scale = d.float() * sc.float()  # exact in float32: 11-bit times 6-bit significands
    return codes, scale, 8 * scale - dmin.float() * mn.float()


_AFFINE_Q4 = {GGMLType.Q4_0: _affine_q4_0, GGMLType.Q4_1: _affine_q4_1, GGMLType.Q4_K: _affine_q4_k}
AFFINE_Q4_TYPES: frozenset[GGMLType] = frozenset(_AFFINE_Q4)


def q4_affine_rows(
    raw: torch.Tensor, ggml_type: GGMLType | int, shape: tuple[int, ...]
) -> Callable[[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For a Q4_0 / Q4_1 / Q4_K weight of `shape` (out, in), a function (r0, r1) -> codes uint8
    (r1-r0, in) in 0..15 and float32 scale, zero (r1-r0, in // 32) with W = (q - 8)*scale + zero.

    raw: the tensor's bytes, 1-D uint8 (only read). Raises ValueError for other types.
    """
    t = GGMLType(int(ggml_type))
    if t not in _AFFINE_Q4:
        raise ValueError(f"{t.name} weights are not affine 4-bit (only Q4_0, Q4_1, Q4_K)")
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(shape)}")
    n, k = (int(x) for x in shape)
    block, block_bytes = BLOCK_SIZES[t]
    if k % block:
        raise ValueError(f"{t.name} row length {k} is not a multiple of {block}")
    if raw.dtype != torch.uint8 or raw.dim() != 1 or raw.numel() != tensor_nbytes(t, n * k):
        raise ModelFileError(
            f"{t.name} tensor of shape ({n}, {k}) needs {tensor_nbytes(t, n * k)} "
            f"bytes, got {raw.numel()} (truncated or corrupt file?)"
        )
    blocks = raw.view(-1, block_bytes)
    per_row = k // block
    decode = _AFFINE_Q4[t]

    def rows(r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes, scale, zero = decode(blocks[r0 * per_row : r1 * per_row])
        return codes.reshape(r1 - r0, k), scale.reshape(r1 - r0, -1), zero.reshape(r1 - r0, -1)

    return rows


def q4_k_rows(raw: torch.Tensor, shape: tuple[int, ...]) -> Callable[[int, int], tuple[torch.Tensor, ...]]:
    """For a Q4_K weight of `shape` (out, in), a function (r0, r1) -> Q4_K's own numbers for
    those rows: codes uint8 (r, in) in 0..15, scales sc and mins mn uint8 (r, in // 32), and d,
    dmin float16 (r, in // 256), with W = d*sc * q - dmin*mn per 32 weights (kernels/int4.py's
    "vnni_k" layout keeps them so). Checks as `q4_affine_rows`."""
    q4_affine_rows(raw, GGMLType.Q4_K, shape)  # the shape and byte-count checks
    k = int(shape[1])
    blocks = raw.view(-1, BLOCK_SIZES[GGMLType.Q4_K][1])
    per_row = k // 256

    def rows(r0: int, r1: int) -> tuple[torch.Tensor, ...]:
        codes, sc, mn, d, dmin = _q4_k_parts(blocks[r0 * per_row : r1 * per_row])
        r = r1 - r0
        return codes.reshape(r, k), sc.reshape(r, -1), mn.reshape(r, -1), d.reshape(r, -1), dmin.reshape(r, -1)

    return rows
