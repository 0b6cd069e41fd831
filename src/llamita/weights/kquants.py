"""K-quant encoders (Q2_K..Q6_K) that reproduce ggml's reference quantizers byte for byte.

These are llama.cpp's `quantize_row_q{2..6}_K_ref`: no importance matrix, which is what
`llama-quantize` runs without `--imatrix`. Re-derived from `ggml-quants.c`, vectorized over all
sub-blocks of a slice; only the small search grids and the quant-by-quant refinement of Q3_K
loop in Python. Bit layouts follow docs/llama-reference.md §6.2; `quants.dequantize` reads what these write.

Byte identity needs the same float32 roundings as the C code, so:
* every sum over a sub-block runs left to right (`_seq_sum`), as the C loop does;
* every product / quotient is its own rounded op in the C expression's order, never fused into
  an FMA (a normal llama.cpp build compiles ggml-base for baseline x86-64, without FMA);
* ggml's `nearest_int` (add 1.5 * 2**23, keep the mantissa) is emulated exactly, including what
  it returns beyond its +-2**22 range, wherever the argument is not bounded by construction;
  inside the scale searches it is bounded and `np.rint` (half to even) is the same function.
The work is numpy on the CPU: its float32 ufuncs are single IEEE ops, a reduction over a
non-contiguous axis is a plain running sum, and its per-call cost is low for the many small
ops of the searches. Every finite input is meant to match (checked from subnormals to 6e37);
inputs holding inf or NaN are not.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

QK_K = 256  # weights per super-block
_f32 = np.float32
_GROUP_MAX_EPS = _f32(1e-15)  # ggml: a sub-block whose largest |x| is below this is all zeros

# Super-blocks per slice: each (P, N) working array of a slice is then 256 KiB, so the handful
# a fit keeps live stay in a core's L2 cache, and each numpy call still covers enough elements
# to hide its fixed cost.
_SLICE_BLOCKS = 256


# --------------------------------------------------------------------------- float helpers


def _seq_sum(t: np.ndarray, from_zero: bool = True) -> np.ndarray:
    """Sum (P, M) float32 over axis 0 left to right, as `for (i...) s += t[i];` does.

    numpy sums pairwise only along the contiguous axis; along axis 0 it adds row after row, as
    long as there are several columns (a single column *is* contiguous: loop then).
    from_zero: the C sum starts at 0, so an all -0.0 sum is +0.0; otherwise it starts at t[0].
    """
    if t.shape[1] < 8:
        s = t[0].copy()
        for row in t[1:]:
            s += row
    else:
        s = np.add.reduce(t, axis=0)
    out: np.ndarray = s + _f32(0) if from_zero else s
    return out


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int on float32 v -> int32: round half to even for |v| <= 2**22, and the
    same mantissa bits as the C trick beyond (it is not range-checked in a release build)."""
    return ((v + _f32(12582912.0)).view(np.int32) & 0x7FFFFF) - 0x400000


def _round_clip(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """In place: nearest_int then clamp to [lo, hi], for |v| known to be < 2**22."""
    np.rint(v, out=v)
    return np.clip(v, lo, hi, out=v)


def _quantize_columns(xm: np.ndarray, iscale: np.ndarray, hi: int, out: np.ndarray) -> np.ndarray:
    """out = clamp(nearest_int(xm * iscale), 0, hi) for xm (P, N), iscale (N,).

    |xm * iscale| is about hi at most, except where iscale itself overflowed (sub-blocks of
    subnormals): those few columns take the exact path, whose inf/NaN give 0 as in C.
    """
    _round_clip(np.multiply(xm, iscale, out=out), 0, hi)
    bad = ~np.isfinite(iscale)
    if bad.any():
        out[:, bad] = np.clip(_nearest_int(xm[:, bad] * iscale[bad]), 0, hi)
    return out


def _signed_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Over axis 0: the value of largest |x| (the first on ties, as a strict `>` scan, which
    also never picks a NaN) and |it|."""
    a = np.abs(x)
    a[np.isnan(a)] = -1
    i = a.argmax(axis=0)
    v = np.take_along_axis(x, i[None], axis=0)[0]
    return v, np.abs(v)


def _positive_max(v: np.ndarray) -> np.ndarray:
    """max(0, max over the last axis), as a scan from 0 with a strict `>` (so never -0.0, and
    NaNs are skipped)."""
    m = np.fmax.reduce(v, axis=-1)
    return np.where(m > 0, m, _f32(0))


# --------------------------------------------------------------------------- scale searches
# Each works on sub-blocks laid out position-major: x (P, N) holds P weights of each of N
# sub-blocks, so a sum over a sub-block is a reduction over axis 0.


def _make_qkx2_quants(
    x: np.ndarray,
    w: np.ndarray,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted fit x ~ scale*L - the_min, L in 0..nmax (ggml make_qkx2_quants).

    Starts from the min/max fit, then tries iscale = (nmax + rmin + rdelta*is) / (max - min)
    for is = 0..nstep, refits scale and min by weighted least squares, and keeps a step if its
    weighted error (|diff| if use_mad else diff**2) is strictly lower. A kept step also replaces
    `min` for the steps after it, which makes the steps sequential.
    Returns scale (N,), the_min (N,) (subtracted; >= 0 up to sign of zero), L (P, N) float32.
    """
    P, N = x.shape
    m0 = x.min(axis=0)
    m0 = np.where(m0 > 0, _f32(0), m0)  # the offset is never positive
    m = m0.copy()  # the offset in force: a kept step replaces it
    mx = x.max(axis=0)
    sum_w = _seq_sum(w, from_zero=False)
    sum_x = _seq_sum(w * x, from_zero=False)

    xm = x - m
    lq = np.empty_like(x)  # candidate quants
    wl, tmp = np.empty((2, P, N), dtype=np.float32)

    def error(scale: np.ndarray, lq: np.ndarray, m: np.ndarray) -> np.ndarray:
        diff = np.multiply(lq, scale, out=tmp)  # ((scale*L) + min) - x, rounded at each step
        np.add(diff, m, out=diff)
        np.subtract(diff, x, out=diff)
        if use_mad:
            np.abs(diff, out=diff)
        else:
            np.multiply(diff, diff, out=diff)
        return _seq_sum(np.multiply(diff, w, out=diff))

    iscale = _f32(nmax) / (mx - m)
    scale = _f32(1) / iscale
    best = error(scale, _quantize_columns(xm, iscale, nmax, lq), m)
    # L is recomputed at the end from the iscale and min in force at the kept step.
    kept_iscale, kept_m = iscale, m0.copy()
    for step in range(nstep + 1):
        factor = _f32(rmin) + _f32(rdelta) * _f32(step) + _f32(nmax)  # float32, as in C
        iscale = factor / (mx - m)
        np.subtract(x, m, out=xm)
        _quantize_columns(xm, iscale, nmax, lq)
        sum_l = _seq_sum(np.multiply(w, lq, out=wl))
        sum_l2 = _seq_sum(np.multiply(wl, lq, out=tmp))
        sum_xl = _seq_sum(np.multiply(wl, x, out=tmp))
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        clipped = this_min > 0  # a positive offset is not allowed: refit the scale alone
        this_min = np.where(clipped, _f32(0), this_min)
        this_scale = np.where(clipped, sum_xl / sum_l2, this_scale)
        cur = error(this_scale, lq, this_min)
        take = (D > 0) & (cur < best)
        np.copyto(best, cur, where=take)
        np.copyto(scale, this_scale, where=take)
        np.copyto(kept_iscale, iscale, where=take)
        np.copyto(kept_m, m, where=take)
        np.copyto(m, this_min, where=take)
    L = _quantize_columns(np.subtract(x, kept_m, out=xm), kept_iscale, nmax, lq)

    flat = mx == m0  # constant sub-block: L = 0, scale 0 and the plain min
    L[:, flat] = 0
    return np.where(flat, _f32(0), scale), -np.where(flat, m0, m), L


def _make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric fit x ~ scale*(L - nmax), L in 0..2*nmax-1, weights x**2 (ggml make_q3_quants
    with do_rmse): the absmax fit, then up to 5 passes that move one quant at a time when that
    raises sumlx**2/suml2. Returns scale (N,), L (P, N) float32 (all 0 for an all-zero group)."""
    mx, amax = _signed_absmax(x)
    w = x * x
    wx = w * x
    L = _round_clip(x * (_f32(-nmax) / mx), -nmax, nmax - 1)
    sumlx = _seq_sum(wx * L)
    suml2 = _seq_sum(w * L * L)
    # A pass that changes nothing in a sub-block would change nothing again (C stops there), so
    # each pass runs only on the sub-blocks the previous one changed: about 1.3 passes' work.
    cols = np.arange(x.shape[1])
    for _ in range(5):
        La, sa, s2a, changed = _q3_pass(x[:, cols], w[:, cols], wx[:, cols], L[:, cols], sumlx[cols], suml2[cols], nmax)
        L[:, cols], sumlx[cols], suml2[cols] = La, sa, s2a
        cols = cols[changed]
        if not cols.size:
            break
    scale = np.where(suml2 > 0, sumlx / suml2, _f32(0))
    zero = amax < _GROUP_MAX_EPS
    L += nmax
    L[:, zero] = 0
    return np.where(zero, _f32(0), scale), L


def _q3_pass(
    x: np.ndarray,
    w: np.ndarray,
    wx: np.ndarray,
    L: np.ndarray,
    sumlx: np.ndarray,
    suml2: np.ndarray,
    nmax: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One refinement pass of make_q3_quants over positions 0..P-1, in order (each move
    depends on the sums the previous one left). Updates L in place; returns L, sumlx, suml2
    and which sub-blocks changed."""
    changed = np.zeros(x.shape[1], dtype=bool)
    for i in range(x.shape[0]):
        Li = L[i]
        slx = sumlx - wx[i] * Li
        sl2 = suml2 - w[i] * Li * Li
        new = np.clip(_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1).astype(np.float32)
        try_it = (slx > 0) & (new != Li)
        slx += wx[i] * new
        sl2 += w[i] * new * new
        take = try_it & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
        np.copyto(Li, new, where=take)
        sumlx = np.where(take, slx, sumlx)
        suml2 = np.where(take, sl2, suml2)
        changed |= take
    return L, sumlx, suml2, changed


def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric fit x ~ scale*(L - nmax), L in 0..2*nmax-1, weights x**2 (ggml make_qx_quants,
    rmse_type 1): the absmax fit, then iscale = -(nmax + 0.1*is)/max for is = -9..9, keeping a
    fit whose sumlx**2/suml2 is strictly larger. Returns scale (N,), L (P, N) float32 (all 0
    for an all-zero group)."""
    mx, amax = _signed_absmax(x)
    w = x * x
    wx = w * x
    lq, tmp = np.empty((2, *x.shape), dtype=np.float32)

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _round_clip(np.multiply(x, iscale, out=lq), -nmax, nmax - 1)
        sumlx = _seq_sum(np.multiply(wx, lq, out=tmp))  # w*x*l
        np.multiply(w, lq, out=tmp)
        return sumlx, _seq_sum(np.multiply(tmp, lq, out=tmp))  # w*l*l

    iscale = _f32(-nmax) / mx
    sumlx, suml2 = fit(iscale)
    scale = np.where(suml2 != 0, sumlx / suml2, _f32(0))
    best = scale * sumlx
    kept_iscale = iscale.copy()  # L is recomputed at the end from the kept step's iscale
    for step in range(-9, 10):
        if step == 0:
            continue
        factor = -(_f32(nmax) + _f32(0.1) * _f32(step))  # float32, as in C
        iscale = factor / mx
        sumlx, suml2 = fit(iscale)
        take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        np.copyto(scale, sumlx / suml2, where=take)
        np.copyto(best, scale * sumlx, where=take)
        np.copyto(kept_iscale, iscale, where=take)
    L = _round_clip(np.multiply(x, kept_iscale, out=lq), -nmax, nmax - 1) + nmax
    zero = amax < _GROUP_MAX_EPS
    L[:, zero] = 0
    return np.where(zero, _f32(0), scale), L


# --------------------------------------------------------------------------- packing helpers


def _sub_blocks(b: np.ndarray, size: int) -> np.ndarray:
    """blocks (n, 256) -> position-major sub-blocks (size, n * 256 // size), contiguous."""
    return np.ascontiguousarray(b.reshape(-1, size).T)


def _blocks(t: np.ndarray, n: int) -> np.ndarray:
    """(size, n * 256 // size) -> (n, 256): the inverse of `_sub_blocks`."""
    return t.T.reshape(n, QK_K)


def _u8(t: np.ndarray) -> np.ndarray:
    """Integers -> uint8 keeping the low 8 bits, as a C store to uint8_t does."""
    return (t & 0xFF).astype(np.uint8)


def _i8(t: np.ndarray) -> np.ndarray:
    """Integers -> int8 keeping the low 8 bits, as a C store to int8_t does (gcc wraps)."""
    return (t & 0xFF).astype(np.uint8).view(np.int8)


def _half_bytes(v: np.ndarray) -> np.ndarray:
    """float32 (n,) -> fp16 (round to nearest even, as GGML_FP32_TO_FP16) as (n, 2) LE bytes."""
    return v.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _half_value(h: np.ndarray) -> np.ndarray:
    """(n, 2) fp16 bytes -> (n, 1) float32, exact (GGML_FP16_TO_FP32)."""
    return h.view(np.float16).astype(np.float32)


def _pack_2bit(q: np.ndarray) -> np.ndarray:
    """q (n, 256) uint8 in 0..3 -> (n, 64): byte 32h+l holds weight 128h+32k+l at bits 2k."""
    q = q.reshape(-1, 2, 4, 32)
    packed: np.ndarray = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return packed.reshape(-1, 64)


def _pack_bit(q: np.ndarray, bit: int) -> np.ndarray:
    """Bit `bit` of q (n, 256) uint8 -> (n, 32): bit j of byte l is that bit of weight 32j+l."""
    bits = (q >> bit) & 1
    return np.packbits(bits.reshape(-1, 8, 32), axis=1, bitorder="little").reshape(-1, 32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """q (n, 256) uint8, low 4 bits used -> (n, 128): 32-byte chunk c holds weights 64c..64c+31
    in its low nibbles and 64c+32..64c+63 in its high nibbles."""
    q = (q & 0xF).reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """6-bit scales, mins (n, 8) uint8 -> Q4_K/Q5_K `scales` (n, 12): bytes 0-3 hold scale j,
    bytes 4-7 min j (j < 4), each topped with the high 2 bits of scale/min j+4; bytes 8-11 hold
    the low nibbles of scale j+4 (low) and min j+4 (high)."""
    hi_s, hi_m = ls[:, 4:], lm[:, 4:]
    top_s, top_m = (hi_s >> 4) << 6, (hi_m >> 4) << 6
    low = (hi_s & 0xF) | (hi_m << 4)  # uint8: the shift drops min j+4's top bits
    return np.concatenate([ls[:, :4] | top_s, lm[:, :4] | top_m, low], axis=1)


# --------------------------------------------------------------------------- encoders
# Each maps blocks (n, 256) float32 to (n, bytes per block) uint8.
# Common shape: fit every sub-block, quantize the sub-block scales (and mins) against the
# block's largest, store that as fp16, then requantize every weight against the *rounded*
# scales. A sub-block whose rounded scale is 0 keeps the quants of its own fit.


def _q2_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    x = _sub_blocks(b, 16)  # (16, 16n)
    scales, mins, L = _make_qkx2_quants(x, np.abs(x), 3, -0.5, 0.1, 15, use_mad=True)
    scales, mins = scales.reshape(n, 16), mins.reshape(n, 16)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    has_s, has_m = max_scale > 0, max_min > 0
    # 4-bit scale (low nibble) and min (high nibble) per sub-block, relative to the largest.
    ls = np.where(has_s[:, None], _nearest_int(scales * (_f32(15) / max_scale)[:, None]), 0)
    lm = np.where(has_m[:, None], _nearest_int(mins * (_f32(15) / max_min)[:, None]), 0)
    sc = _u8(ls | (lm << 4))
    d = _half_bytes(np.where(has_s, max_scale / _f32(15), _f32(0)))
    dmin = _half_bytes(np.where(has_m, max_min / _f32(15), _f32(0)))

    dl = (_half_value(d) * (sc & 0xF)).reshape(-1)  # (16n,)
    ml = (_half_value(dmin) * (sc >> 4)).reshape(-1)
    q = np.clip(_nearest_int((x + ml) / dl), 0, 3)
    L = np.where(dl != 0, q, L)
    return np.concatenate([sc, _pack_2bit(_blocks(L, n).astype(np.uint8)), d, dmin], axis=1)


def _q3_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    x = _sub_blocks(b, 16)  # (16, 16n)
    scales, L = _make_q3_quants(x, 4)
    scales = scales.reshape(n, 16)
    max_scale, _ = _signed_absmax(scales.T)
    has = max_scale != 0
    iscale = _f32(-32) / max_scale
    # 6-bit signed scales stored + 32 (after a C store to int8).
    l8 = _i8(_nearest_int(scales * iscale[:, None])).astype(np.int32)
    ls = np.where(has[:, None], np.clip(l8, -32, 31) + 32, 0).astype(np.uint8)  # (n, 16)
    d = _half_bytes(np.where(has, _f32(1) / iscale, _f32(0)))
    hi = ls >> 4
    packed = np.concatenate(
        [
            (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4),
            hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6),
        ],
        axis=1,
    )

    dl = (_half_value(d) * (ls.astype(np.float32) - 32)).reshape(-1)  # (16n,)
    q = np.clip(_nearest_int(x / dl), -4, 3) + 4
    L = _blocks(np.where(dl != 0, q, L), n).astype(np.uint8)  # 0..7
    # Bit 2 of each quant goes to hmask (weight 32j+l -> bit j of byte l), the low 2 bits to qs.
    return np.concatenate([_pack_bit(L, 2), _pack_2bit(L & 3), packed, d], axis=1)


def _q45_k(b: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple[np.ndarray, ...]:
    """Shared body of Q4_K (nmax 15) and Q5_K (nmax 31): d, dmin, scales bytes, quants (n, 256)."""
    n = b.shape[0]
    x = _sub_blocks(b, 32)  # (32, 8n)
    av_x = np.sqrt(_seq_sum(x * x) / _f32(32))  # weights: the sub-block's RMS plus |x|
    scales, mins, L = _make_qkx2_quants(x, av_x + np.abs(x), nmax, rmin, 0.1, nstep, False)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale, max_min = _positive_max(scales), _positive_max(mins)
    inv_scale = np.where(max_scale > 0, _f32(63) / max_scale, _f32(0))[:, None]
    inv_min = np.where(max_min > 0, _f32(63) / max_min, _f32(0))[:, None]
    ls = np.minimum(_u8(_nearest_int(inv_scale * scales)), 63)
    lm = np.minimum(_u8(_nearest_int(inv_min * mins)), 63)
    d, dmin = _half_bytes(max_scale / _f32(63)), _half_bytes(max_min / _f32(63))

    dl = (_half_value(d) * ls).reshape(-1)  # (8n,)
    ml = (_half_value(dmin) * lm).reshape(-1)
    q = np.clip(_nearest_int((x + ml) / dl), 0, nmax)
    L = _blocks(np.where(dl != 0, q, L), n).astype(np.uint8)
    return d, dmin, _pack_scale_min_k4(ls, lm), L


def _q4_k(b: np.ndarray) -> np.ndarray:
    d, dmin, scales, L = _q45_k(b, 15, -1.0, 20)
    return np.concatenate([d, dmin, scales, _pack_nibbles(L)], axis=1)


def _q5_k(b: np.ndarray) -> np.ndarray:
    d, dmin, scales, L = _q45_k(b, 31, -0.5, 15)
    return np.concatenate([d, dmin, scales, _pack_bit(L, 4), _pack_nibbles(L)], axis=1)


def _q6_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    x = _sub_blocks(b, 16)  # (16, 16n)
    scales, L = _make_qx_quants(x, 32)
    scales = scales.reshape(n, 16)
    max_scale, max_abs = _signed_absmax(scales.T)
    live = max_abs >= _GROUP_MAX_EPS  # otherwise the whole block is stored as zeros
    iscale = _f32(-128) / max_scale
    sc = _i8(np.minimum(_nearest_int(scales * iscale[:, None]), 127))
    sc = np.where(live[:, None], sc, np.int8(0))
    d = _half_bytes(np.where(live, _f32(1) / iscale, _f32(0)))

    dl = (_half_value(d) * sc).reshape(-1)  # (16n,)
    q = np.clip(_nearest_int(x / dl), -32, 31) + 32
    L = np.where(dl != 0, q, L)
    L[:, ~np.repeat(live, 16)] = 0
    L = _blocks(L, n).astype(np.uint8).reshape(n, 2, 4, 32)  # (block, half, quarter, l)
    # Per 128-weight half: ql byte l holds quarters 0 (low nibble) and 2 (high), byte 32+l
    # quarters 1 and 3; qh byte l holds the top 2 bits of quarter k at bits 2k.
    lo, hi = L & 0xF, L >> 4
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), d], axis=1)


def _encoder(
    encode: Callable[[np.ndarray], np.ndarray], nbytes: int, slice_factor: int = 1
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A torch encoder: blocks (n, 256) -> (n, nbytes) uint8 on blocks' device, computed by
    `encode` on the CPU over slices of `_SLICE_BLOCKS * slice_factor` super-blocks, on as many
    threads as torch uses (numpy releases the GIL inside its loops)."""

    def run(blocks: torch.Tensor) -> torch.Tensor:
        x = blocks.detach().to("cpu", torch.float32).numpy()
        out = np.empty((x.shape[0], nbytes), dtype=np.uint8)
        step = _SLICE_BLOCKS * slice_factor

        def slice_at(i: int) -> None:
            # Like the C code, the fits divide by zero for constant or all-zero sub-blocks and
            # discard those values afterwards; numpy need not warn (errstate is per thread).
            with np.errstate(all="ignore"):
                out[i : i + step] = encode(x[i : i + step])

        starts = range(0, x.shape[0], step)
        workers = min(torch.get_num_threads(), len(starts))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(slice_at, starts))
        else:
            for i in starts:
                slice_at(i)
        return torch.from_numpy(out).to(blocks.device)

    return run


quantize_q2_k = _encoder(_q2_k, 84)
# Q3_K's refinement works on one position (N,) at a time, so its calls are 16x smaller.
quantize_q3_k = _encoder(_q3_k, 110, slice_factor=4)
quantize_q4_k = _encoder(_q4_k, 144)
quantize_q5_k = _encoder(_q5_k, 176)
quantize_q6_k = _encoder(_q6_k, 210)
