"""Affine 4-bit weights (GGML's Q4_0, Q4_1, Q4_K) on a packed int4 CPU matmul.

Two kernels take the same weights (4-bit codes q, bfloat16 scale and zero per 32 weights):
- layout "vnni": llamita's own (kernels/csrc/q4_vnni.cpp; mm256.cpp for AVX-VNNI and AVX2, the
  same layout and bits, `native.kernel_level()` picks one), which quantizes the activations to
  int8 per 32 values, as llama.cpp does, and multiplies them as integers; 2-4x faster than
  torch's (AVX-512), and the default wherever `native.vnni_kernels()` builds and loads a level;
- layout "torch": torch's weight-only kernel, exact in bfloat16 activations, everywhere else
  (and the reference the first is measured against). The rest of this docstring is about it.
A third, "vnni_k" (kernels/csrc/q4k_vnni.cpp), is the first with Q4_K's own numbers in place of
the bfloat16 scale and zero: the same codes, 4.625 bits a weight instead of 5, and exactly
GGML's weights (`pack_int4_k`). A fourth, "vnni_q6k" (kernels/csrc/q6k_vnni.cpp), holds Q6_K
weights in their own 6-bit codes and scales (`pack_ggml_q6k_blocks`); it shares the 16-row
blocks, the activations and the Int4Weight holder, not the 4 bits.

torch's weight-only kernel `aten._weight_int4pack_mm_for_cpu(x, packed, group, scales_and_zeros)`
computes `x @ Wᵀ` with `W[n, k] = (q[n, k] - 8) * scale[g, n] + zero[g, n]`, g = k // group,
q ∈ 0..15, in float32 from bfloat16 x, scale and zero, rounding the output to bfloat16. Every
GGML 4-bit format is affine per 32 weights in the same q, so with group 32 it maps term by term
(derivations in `_DECODERS`); the only loss is rounding each group's scale and zero to bfloat16.

The packed layout is private to the kernel and differs with the CPU capability torch dispatches
to (AVX512 packs 64 rows per block, AVX2 32, others pairs of rows). It is discovered once per
process by `_probe_layout`, which also checks the kernel's arithmetic; `int4_supported()` is
False unless both checks pass, and callers then keep dense weights. Packed weights are therefore
only valid in the process (and CPU) that packed them: never save them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from llamita.kernels import native

GROUP_SIZE = 32  # every GGML 4-bit format has one affine scale/offset per 32 weights
ROW_MULTIPLE = 16  # the kernel's requirement on out_features (N)
_INNER_K_TILES = 1  # ignored by the CPU kernel (it only matters to the CUDA layout)
# Rows packed per step: a multiple of every known block height (16, 32, 64), so chunks land on
# packed-block boundaries, and about this many weights, bounding the int32 codes to ~4 MiB.
_CHUNK_ROWS_ALIGN = 64
_CHUNK_WEIGHTS = 1 << 20


@dataclass(frozen=True, eq=False)
class Int4Weight:
    """A linear weight (out_features, in_features) packed for an int4 CPU kernel (`layout`).

    packed: uint8 (out_features, in_features // 2), opaque kernel layout (see module docstring).
    scales_and_zeros: bfloat16, so that W = (q - 8) * scale + zero per group; layout "torch":
    (in_features // group_size, out_features, 2), [..., 0] = scale, [..., 1] = zero; layout
    "vnni": (out_features // 16, in_features // group_size, 2, 16), 16 rows' scales then zeros.
    Layout "vnni_k" holds Q4_K's numbers instead, uint8 (out_features // 16, in_features // 256,
    320): per 16 rows and 256 weights, sc[8][16], mn[8][16], then f16 d[16] and dmin[16]
    (`_vnni_k_meta`), with W = d*sc * q - dmin*mn. Layout "vnni_q6k" holds a Q6_K weight in its
    own 6-bit codes: packed uint8 (out_features, 3 * in_features // 4) and scales_and_zeros
    uint8 (out_features // 16, in_features // 256, 288), W = d*sc * (q - 32) (q6k_vnni.cpp).
    """

    packed: torch.Tensor
    scales_and_zeros: torch.Tensor
    out_features: int
    in_features: int
    group_size: int = GROUP_SIZE
    layout: str = "torch"

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed codes and the scales (what one matmul reads)."""
        return self.packed.nbytes + self.scales_and_zeros.nbytes


# --------------------------------------------------------------------------- kernel probe


@dataclass(frozen=True)
class _PackLayout:
    """How `_convert_weight_to_int4pack_for_cpu` arranges codes; the bytes are always
    (N // block_n) blocks of (K, block_n // 2), then a tail block of (K, rest // 2).

    halves: in full blocks, byte j holds row j (low nibble) and row j + block_n // 2 (high);
    otherwise, and always in the tail block, byte j holds rows 2j (low) and 2j + 1 (high).
    """

    block_n: int
    halves: bool


_CANDIDATE_LAYOUTS = tuple(_PackLayout(b, h) for b in (64, 32, 16) for h in (True, False))


def _write_blocks(packed: torch.Tensor, sz: torch.Tensor, block_n: int, halves: bool, out: torch.Tensor) -> None:
    """Dequantize whole blocks: packed (r, k/2) uint8, sz (k/32, r, 2) float32 -> out (r, k)
    contiguous float32, r a multiple of block_n."""
    r, k = out.shape
    nb = r // block_n
    # Per block the bytes run (k, block_n/2); transposed, byte row i holds two weight rows.
    byte_rows = packed.reshape(nb, k, block_n // 2).transpose(1, 2).contiguous()
    if halves:  # low nibbles: the block's first half of rows, high nibbles: the second half
        o = out.view(nb, 2, block_n // 2, k)
        lo_rows, hi_rows = o[:, 0], o[:, 1]
    else:  # low nibbles: even rows, high nibbles: odd rows
        o = out.view(nb, block_n // 2, 2, k)
        lo_rows, hi_rows = o[:, :, 0], o[:, :, 1]
    lo_rows.copy_((byte_rows & 0x0F).view(torch.int8).sub_(8))  # q - 8, exact
    hi_rows.copy_((byte_rows >> 4).view(torch.int8).sub_(8))
    # (q - 8) * scale is exact in float32 (4-bit times 8-bit significands), so the add is the
    # only rounding, as in the kernel's fused multiply-add. (torch.addcmul would fuse the two
    # passes but is ~4x slower with broadcast operands.)
    w = out.view(r, k // GROUP_SIZE, GROUP_SIZE)
    w.mul_(sz[:, :, 0].T.unsqueeze(-1)).add_(sz[:, :, 1].T.unsqueeze(-1))  # (r, k/32, 1) each


def _write_rows(packed: torch.Tensor, sz: torch.Tensor, layout: _PackLayout, out: torch.Tensor) -> None:
    """out (r, k) = the weights of packed rows (r, k/2) starting on a block boundary."""
    full = packed.shape[0] // layout.block_n * layout.block_n
    if full:
        _write_blocks(packed[:full], sz[:, :full], layout.block_n, layout.halves, out[:full])
    if packed.shape[0] > full:  # the last, shorter block always pairs rows
        tail = packed.shape[0] - full
        _write_blocks(packed[full:], sz[:, full:], tail, False, out[full:])


@functools.cache
def _probe_layout() -> _PackLayout | None:
    """Find the packed layout of this build/CPU and check the kernel computes (q-8)*s+z.

    Returns None when the ops are missing, fail, or behave otherwise (callers stay dense).
    """
    n, k = 2 * 64 + 48, 2 * GROUP_SIZE  # a tail block for every candidate block height
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.int32)
    sz = torch.randn((k // GROUP_SIZE, n, 2), generator=gen).to(torch.bfloat16)
    scale, zero = sz.float().unbind(-1)  # (k/32, n) each
    groups = (codes.float() - 8).view(n, k // GROUP_SIZE, GROUP_SIZE)
    expected = (groups * scale.T.unsqueeze(-1) + zero.T.unsqueeze(-1)).view(n, k)
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, _INNER_K_TILES)
        # Identity activations read the effective weights back out: y = Wᵀ rounded to bf16.
        eye = torch.eye(k, dtype=torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, GROUP_SIZE, sz)
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if packed.dtype != torch.uint8 or tuple(packed.shape) != (n, k // 2):
        return None
    if not torch.equal(y.T, expected.to(torch.bfloat16)):
        return None
    for layout in _CANDIDATE_LAYOUTS:
        w = torch.empty((n, k))
        _write_rows(packed, sz.float(), layout, w)
        if torch.equal(w, expected):
            return layout
    return None


def int4_supported() -> bool:
    """True if a packed int4 CPU matmul runs here: llamita's VNNI kernel, or torch's when it
    exists and behaves as this module expects (probed once per process, milliseconds)."""
    return native.vnni_kernels() or _probe_layout() is not None


def default_layout() -> str:
    """The layout new weights are packed in: "vnni" where that kernel loads, else "torch"."""
    return "vnni" if native.vnni_kernels() else "torch"


VNNI_BLOCK_ROWS = 16  # rows per block of the "vnni" layouts (q4_vnni.cpp, q4k_vnni.cpp)
K_SUPER = 256  # weights per Q4_K super-block: one d and dmin over 8 groups of 32
# 16-row blocks: they slice and join alike. "vnni_q6k" holds Q6_K's 6-bit codes (q6k_vnni.cpp).
VNNI_LAYOUTS = ("vnni", "vnni_k", "vnni_q6k")
_VNNI_MM = {"vnni": "q4_vnni_mm", "vnni_k": "q4k_vnni_mm", "vnni_q6k": "q6k_vnni_mm"}


def _vnni_codes(codes: torch.Tensor) -> torch.Tensor:
    """codes uint8 (r, k) in 0..15, r a multiple of 16 -> the "vnni" bytes (r, k/2): per block
    of 16 rows, group g and chunk c of 8 k, byte 4 row + j = q[row, 8c + j] | q[row, 8c+4+j] << 4."""
    r, k = codes.shape
    # (block, row, group, chunk, nibble, j) -> (block, group, chunk, row, j, nibble)
    a = codes.reshape(r // 16, 16, k // GROUP_SIZE, 4, 2, 4).permute(0, 2, 3, 1, 5, 4)
    return (a[..., 0] | (a[..., 1] << 4)).reshape(r, k // 2)


def _vnni_decode(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `_vnni_codes`: (r, k/2) bytes -> codes uint8 (r, k)."""
    r, half = packed.shape
    k = 2 * half
    b = packed.reshape(r // 16, k // GROUP_SIZE, 4, 16, 4)  # (block, group, chunk, row, j)
    q = torch.stack([b & 0x0F, b >> 4], dim=-1)  # (..., row, j, nibble)
    return q.permute(0, 3, 1, 2, 5, 4).reshape(r, k)


def _vnni_scales(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """scale, zero (r, k/32) -> bfloat16 (r/16, k/32, 2, 16)."""
    r, g = scale.shape
    per_block = [t.reshape(r // 16, 16, g).transpose(1, 2) for t in (scale, zero)]
    return torch.stack(per_block, dim=2).to(torch.bfloat16)


def _vnni_scale_zero(sz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bfloat16 (r/16, k/32, 2, 16) -> float32 scale, zero (r, k/32)."""
    nb, g = sz.shape[:2]
    s, z = (sz[:, :, i].transpose(1, 2).reshape(nb * 16, g).float() for i in (0, 1))
    return s, z


def _vnni_k_meta(sc: torch.Tensor, mn: torch.Tensor, d: torch.Tensor, dmin: torch.Tensor) -> torch.Tensor:
    """sc, mn uint8 (r, k/32); d, dmin float16 (r, k/256) -> the "vnni_k" meta uint8
    (r/16, k/256, 320): per 16-row block and super-block, sc[j][row], mn[j][row], d[row],
    dmin[row]."""
    r, g = sc.shape
    supers = g // 8
    per_sub = [t.reshape(r // 16, 16, supers, 8).permute(0, 2, 3, 1).reshape(r // 16, supers, 128) for t in (sc, mn)]
    per_row = [
        t.contiguous()
        .view(torch.uint8)
        .reshape(r // 16, 16, supers, 2)
        .permute(0, 2, 1, 3)
        .reshape(r // 16, supers, 32)
        for t in (d, dmin)
    ]
    return torch.cat(per_sub + per_row, dim=-1).contiguous()


def _vnni_k_parts(meta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Inverse of `_vnni_k_meta`: sc, mn uint8 (r, k/32) and d, dmin float16 (r, k/256)."""
    nb, supers = meta.shape[:2]
    sc, mn = (
        meta[..., 128 * i : 128 * (i + 1)].reshape(nb, supers, 8, 16).permute(0, 3, 1, 2).reshape(nb * 16, supers * 8)
        for i in (0, 1)
    )
    d, dmin = (
        meta[..., at : at + 32]
        .reshape(nb, supers, 16, 2)
        .permute(0, 2, 1, 3)
        .contiguous()
        .view(torch.float16)
        .reshape(nb * 16, supers)
        for at in (256, 288)
    )
    return sc, mn, d, dmin


# --------------------------------------------------------------------------- packing

# Produces rows [r0, r1) of an affine 4-bit weight: codes uint8 (r1-r0, k) in 0..15, and
# float32 scale, zero (r1-r0, k // 32) with W = (q - 8) * scale + zero.
AffineRows = Callable[[int, int], "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"]


def _chunk_rows(k: int) -> int:
    return max(_CHUNK_ROWS_ALIGN, _CHUNK_WEIGHTS // k // _CHUNK_ROWS_ALIGN * _CHUNK_ROWS_ALIGN)


def pack_int4(out_features: int, in_features: int, rows: AffineRows, layout: str | None = None) -> Int4Weight:
    """Pack an affine 4-bit weight (group 32) for an int4 CPU kernel (`layout`: "vnni" or
    "torch"; None: `default_layout()`).

    `rows(r0, r1)` supplies the codes, scales and zeros of a range of rows (the GGML formats
    provide it: `weights.quants.q4_affine_rows`); packing asks for one chunk of rows at a
    time, so temporaries stay near 4 MiB beyond the packed result.
    Raises ValueError when the shape does not fit the kernel (out_features not a multiple of
    16, in_features not a multiple of 32) or the kernel is unavailable: callers keep the weight
    dense then.
    """
    n, k = int(out_features), int(in_features)
    if n <= 0 or n % ROW_MULTIPLE or k <= 0 or k % GROUP_SIZE:
        raise ValueError(
            f"a weight of shape ({n}, {k}) does not fit the int4 kernel: it needs out_features a "
            f"positive multiple of {ROW_MULTIPLE} and in_features a multiple of {GROUP_SIZE}"
        )
    layout = layout or default_layout()
    if layout == "vnni":
        if not native.vnni_kernels():
            raise ValueError(f"llamita's int4 kernel is unavailable: {native.vnni_kernels_skipped()}")
        return _pack_vnni(n, k, rows)
    if layout != "torch":
        raise ValueError(f"unknown int4 layout {layout!r}")
    if _probe_layout() is None:
        raise ValueError("torch's packed int4 CPU matmul is unavailable on this build or CPU")
    packed = torch.empty((n, k // 2), dtype=torch.uint8)
    sz = torch.empty((k // GROUP_SIZE, n, 2), dtype=torch.bfloat16)
    step = _chunk_rows(k)
    # Packing is per block of rows, so packing chunks that start on block boundaries writes
    # exactly the bytes one call over the whole weight would.
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        codes, scale, zero = rows(r0, r1)
        codes = codes.reshape(r1 - r0, k).to(torch.int32)
        packed[r0:r1] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, _INNER_K_TILES)
        sz[:, r0:r1, 0] = scale.reshape(r1 - r0, k // GROUP_SIZE).T  # rounds to bfloat16
        sz[:, r0:r1, 1] = zero.reshape(r1 - r0, k // GROUP_SIZE).T
    return Int4Weight(packed, sz, n, k)


def _pack_vnni(n: int, k: int, rows: AffineRows) -> Int4Weight:
    packed = torch.empty((n, k // 2), dtype=torch.uint8)
    sz = torch.empty((n // VNNI_BLOCK_ROWS, k // GROUP_SIZE, 2, VNNI_BLOCK_ROWS), dtype=torch.bfloat16)
    step = _chunk_rows(k)  # a multiple of 64 rows, so chunks start on 16-row blocks
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        codes, scale, zero = rows(r0, r1)
        packed[r0:r1] = _vnni_codes(codes.reshape(r1 - r0, k))
        sz[r0 // 16 : r1 // 16] = _vnni_scales(scale.reshape(r1 - r0, -1), zero.reshape(r1 - r0, -1))
    return Int4Weight(packed, sz, n, k, layout="vnni")


# Produces rows [r0, r1) of a Q4_K weight in its own numbers: codes uint8 (r, k) in 0..15,
# sc, mn uint8 (r, k // 32) and d, dmin float16 (r, k // 256) (`weights.quants.q4_k_rows`).
KRows = Callable[[int, int], "tuple[torch.Tensor, ...]"]


def pack_int4_k(out_features: int, in_features: int, rows: KRows) -> Int4Weight:
    """Pack a Q4_K weight into the "vnni_k" layout (llamita's kernel, Q4_K's own scales).

    `rows` as in `pack_int4`, one chunk of rows at a time. Raises ValueError when the shape
    does not fit (out_features not a multiple of 16, in_features not of 256) or the native
    kernels are unavailable.
    """
    n, k = int(out_features), int(in_features)
    if n <= 0 or n % VNNI_BLOCK_ROWS or k <= 0 or k % K_SUPER:
        raise ValueError(
            f"a Q4_K weight of shape ({n}, {k}) does not fit the vnni_k layout: it needs "
            f"out_features a positive multiple of {VNNI_BLOCK_ROWS} and in_features of {K_SUPER}"
        )
    if not native.vnni_kernels():
        raise ValueError(f"llamita's int4 kernel is unavailable: {native.vnni_kernels_skipped()}")
    packed = torch.empty((n, k // 2), dtype=torch.uint8)
    meta = torch.empty((n // VNNI_BLOCK_ROWS, k // K_SUPER, 320), dtype=torch.uint8)
    step = _chunk_rows(k)  # a multiple of 64 rows, so chunks start on 16-row blocks
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        codes, sc, mn, d, dmin = rows(r0, r1)
        packed[r0:r1] = _vnni_codes(codes.reshape(r1 - r0, k))
        meta[r0 // 16 : r1 // 16] = _vnni_k_meta(sc, mn, d, dmin)
    return Int4Weight(packed, meta, n, k, layout="vnni_k")


def pack_ggml_k_blocks(raw: torch.Tensor, out_features: int, in_features: int) -> Int4Weight:
    """A GGML Q4_K weight's raw bytes straight into the "vnni_k" layout in one native pass
    (`q4k_vnni_pack_ggml`); the same bytes as `pack_int4_k` over `quants.q4_k_rows`."""
    codes, meta = native.kernel_ops().q4k_vnni_pack_ggml(raw, out_features, in_features)
    return Int4Weight(codes, meta, out_features, in_features, layout="vnni_k")


def pack_ggml_blocks(raw: torch.Tensor, out_features: int, in_features: int, has_min: bool) -> Int4Weight:
    """A GGML Q4_0 (`has_min` False) or Q4_1 weight's raw bytes straight into the "vnni" layout
    in one native pass (`q4_vnni_pack_ggml`); the same bytes as `pack_int4` over the blocks'
    codes, scales and zeros. Needs the native kernels and a shape `pack_int4` accepts."""
    codes, sz = native.kernel_ops().q4_vnni_pack_ggml(raw, out_features, in_features, has_min)
    return Int4Weight(codes, sz, out_features, in_features, layout="vnni")


def pack_ggml_q6k_blocks(raw: torch.Tensor, out_features: int, in_features: int) -> Int4Weight:
    """A GGML Q6_K weight's raw bytes into the "vnni_q6k" layout in one native pass
    (`q6k_vnni_pack_ggml`): Q6_K's own codes and scales, 6.5625 bits a weight. Raises
    ValueError where no kernel level loads or the shape does not fit (rows a multiple of 16,
    columns of 256)."""
    if out_features % VNNI_BLOCK_ROWS or in_features % K_SUPER or not native.vnni_kernels():
        raise ValueError(
            f"a Q6_K weight of shape ({out_features}, {in_features}) does not fit the "
            f"vnni_q6k layout (rows a multiple of {VNNI_BLOCK_ROWS}, columns of {K_SUPER}, "
            f"llamita's kernels: {native.kernel_summary()})"
        )
    codes, meta = native.kernel_ops().q6k_vnni_pack_ggml(raw, out_features, in_features)
    return Int4Weight(codes, meta, out_features, in_features, layout="vnni_q6k")


def concat_int4(weights: Sequence[Int4Weight]) -> Int4Weight | None:
    """One packed weight whose output rows are those of `weights` in order (all with the same
    in_features and group), or None where the packed layout cannot be joined.

    Packing works per block of rows, so concatenating packed codes is exact when every part
    but the last fills whole blocks (out_features a multiple of the block height, 64 rows on
    AVX-512): then each row's codes, and so each output element, are computed as for the part
    alone. The scales and zeros are joined along their row axis.
    """
    first = weights[0]
    if len(weights) < 2 or any(
        w.layout != first.layout or w.in_features != first.in_features or w.group_size != first.group_size
        for w in weights
    ):
        return None
    packed = torch.cat([w.packed for w in weights])
    total = sum(w.out_features for w in weights)
    if first.layout in VNNI_LAYOUTS:  # 16-row blocks, whole in every part: rows and scales join
        sz = torch.cat([w.scales_and_zeros for w in weights])
        return Int4Weight(packed, sz, total, first.in_features, first.group_size, first.layout)
    layout = _probe_layout()
    if layout is None or any(w.out_features % layout.block_n for w in weights[:-1]):
        return None
    sz = torch.cat([w.scales_and_zeros for w in weights], dim=1)
    return Int4Weight(packed, sz, total, first.in_features, first.group_size)


# --------------------------------------------------------------------------- compute


def int4_linear(x: torch.Tensor, w: Int4Weight, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x (..., in_features) -> x @ Wᵀ (..., out_features), on CPU.

    torch's kernel takes bfloat16 activations (x is rounded to bfloat16) and rounds its result
    to bfloat16; llamita's ("vnni" layouts, any SIMD level) take float32 or bfloat16 x as it is
    and accumulate in float32. The result is returned in `out_dtype` (None: x's dtype).
    """
    if x.shape[-1] != w.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the weight expects {w.in_features}")
    if w.layout in VNNI_LAYOUTS:  # float32 out: activations quantized to int8 per 32 (module doc)
        mm = getattr(native.kernel_ops(), _VNNI_MM[w.layout])
        y: torch.Tensor = mm(kernel_activations(x, w.in_features), w.packed, w.scales_and_zeros)
        return y.view(*x.shape[:-1], w.out_features).to(out_dtype or x.dtype)
    x2 = x.reshape(-1, w.in_features).to(torch.bfloat16).contiguous()  # (M, in)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, w.packed, w.group_size, w.scales_and_zeros)  # (M, out) bfloat16
    return y.view(*x.shape[:-1], w.out_features).to(out_dtype or x.dtype)


def kernel_activations(x: torch.Tensor, in_features: int) -> torch.Tensor:
    """x (..., in_features) as the 2-D contiguous (M, in_features) float32 or bfloat16 matrix
    llamita's kernels take (they quantize it per 32 from its own values: float32 x is not
    rounded to bfloat16 first); other dtypes go through float32."""
    x2 = x.reshape(-1, in_features)
    if x2.dtype not in (torch.float32, torch.bfloat16):
        x2 = x2.float()
    return x2.contiguous()


def dequantize_int4(w: Int4Weight, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Rebuild the dense weight (out_features, in_features) from the packed form.

    In float32 this is exactly the weight the kernel multiplies by (in bfloat16, that weight
    rounded once), so `F.linear(x, dequantize_int4(w))` is the dense twin of `int4_linear`.
    It differs from GGUF's own dequantization only by the bfloat16 scale and zero (layout
    "vnni_k": not at all, in float32).
    """
    n, k = w.out_features, w.in_features
    if w.layout == "vnni":
        return _dequantize_vnni(w, dtype)
    if w.layout == "vnni_k":
        if dtype in (torch.bfloat16, torch.float32):
            return native.kernel_ops().q4k_vnni_dequantize(w.packed, w.scales_and_zeros, dtype)
        return _dequantize_vnni_k_torch(w, dtype)
    if w.layout == "vnni_q6k":  # computed in float32, rounded once to dtype
        dense = native.kernel_ops().q6k_vnni_dequantize(
            w.packed, w.scales_and_zeros, dtype if dtype in (torch.bfloat16, torch.float32) else torch.float32
        )
        return dense.to(dtype)
    layout = _probe_layout()
    if layout is None:  # only reachable with an Int4Weight built in another process
        raise ValueError("torch's packed int4 CPU matmul is unavailable on this build or CPU")
    out = torch.empty((n, k), dtype=dtype)
    step = _chunk_rows(k)
    # Computed in float32 (written straight into a float32 result, else through one reused
    # chunk-sized buffer) and rounded once to dtype.
    scratch = None if dtype == torch.float32 else torch.empty((min(step, n), k))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        dst = out[r0:r1] if scratch is None else scratch[: r1 - r0]
        _write_rows(w.packed[r0:r1], w.scales_and_zeros[:, r0:r1].float(), layout, dst)
        if scratch is not None:
            out[r0:r1] = dst
    return out


def _dequantize_vnni(w: Int4Weight, dtype: torch.dtype) -> torch.Tensor:
    if dtype in (torch.bfloat16, torch.float32):  # the kernel's one pass: the same values
        return native.kernel_ops().q4_vnni_dequantize(w.packed, w.scales_and_zeros, dtype)
    return _dequantize_vnni_torch(w, dtype)


def _dequantize_vnni_torch(w: Int4Weight, dtype: torch.dtype) -> torch.Tensor:
    """`_dequantize_vnni` in torch ops (other dtypes; the kernel's reference in its tests)."""
    n, k = w.out_features, w.in_features
    out = torch.empty((n, k), dtype=dtype)
    step = _chunk_rows(k)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        q = _vnni_decode(w.packed[r0:r1]).view(torch.int8).sub(8).float()  # q - 8, exact
        s, z = _vnni_scale_zero(w.scales_and_zeros[r0 // 16 : r1 // 16])
        # As the "torch" layout: (q - 8) * s exact in float32, the add the only rounding.
        wq = q.view(r1 - r0, k // GROUP_SIZE, GROUP_SIZE).mul_(s.unsqueeze(-1)).add_(z.unsqueeze(-1))
        out[r0:r1] = wq.view(r1 - r0, k)
    return out


def _dequantize_vnni_k_torch(w: Int4Weight, dtype: torch.dtype) -> torch.Tensor:
    """The "vnni_k" weights in torch ops: W = d*sc * q - dmin*mn, computed in float32 (the
    product exact, the subtraction the one rounding) and rounded once to `dtype`."""
    n, k = w.out_features, w.in_features
    out = torch.empty((n, k), dtype=dtype)
    step = _chunk_rows(k)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        q = _vnni_decode(w.packed[r0:r1]).float().view(r1 - r0, k // GROUP_SIZE, GROUP_SIZE)
        sc, mn, d, dmin = _vnni_k_parts(w.scales_and_zeros[r0 // 16 : r1 // 16])
        s = d.float().repeat_interleave(8, dim=1) * sc.float()  # (r, k/32), exact
        m = dmin.float().repeat_interleave(8, dim=1) * mn.float()
        out[r0:r1] = q.mul_(s.unsqueeze(-1)).sub_(m.unsqueeze(-1)).view(r1 - r0, k)
    return out
