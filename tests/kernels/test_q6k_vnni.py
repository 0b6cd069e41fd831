"""The Q6_K kernel ("vnni_q6k", kernels/csrc/q6k_vnni.cpp and mm256.cpp) at every SIMD level this
CPU has, against float64 statements over the weight as `weights.quants.dequantize` decodes the
GGUF bytes (itself checked against the `gguf` package), never against our own packing:

- the matmul: (dequantized W) @ (x quantized to int8 per 32, tests/vnni_reference.py), within
  the kernel's float32 roundings (a bound from the magnitudes of its terms);
- the same product with x unquantized, within what the int8 rounding of x allows;
- dequantization: bit-equal to `quants.dequantize` in float32;
- every level returns the same bits; inf / NaN / subnormal d scales only spoil their own rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llamita.kernels import int4, native
from llamita.weights.quants import GGMLType, dequantize, quantize
from tests.vnni_reference import int8_activations

E32 = 2.0**-24
LEVELS = [lv.name for lv in native.KERNEL_LEVELS]
SHAPE = (80, 768)  # 5 blocks of 16 rows, 3 super-blocks of 256 (24 groups of 32)


def _ops(level: str):
    ops = native.level_ops(level)
    if ops is None:
        pytest.skip(f"kernel level {level} is unavailable here: {native.kernel_level_skipped(level)}")
    return ops


def _raw(seed: int, shape: tuple[int, int] = SHAPE) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return quantize(torch.randn(shape, generator=gen) * 0.05, GGMLType.Q6_K)


def _statement(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 y = (d xq) Wᵀ and the bound of the kernel's float32 roundings: a few per group
    term (the product of scales, the int32 -> float conversion, the fused add), then one per
    group in the sum over the groups."""
    xq, d = int8_activations(x)  # (m, g, 32), (m, g)
    m, g, _ = xq.shape
    y = F.linear((xq * d.unsqueeze(-1)).flatten(1), weights)
    terms = torch.einsum("mgk,ngk->mng", xq.abs(), weights.abs().view(-1, g, 32)) * d.unsqueeze(1)
    return y, (8 + g) * E32 * terms.sum(-1)


def _pack(ops, raw: torch.Tensor, shape: tuple[int, int]) -> int4.Int4Weight:
    codes, meta = ops.q6k_vnni_pack_ggml(raw, *shape)
    return int4.Int4Weight(codes, meta, *shape, layout="vnni_q6k")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("m", [1, 2, 3, 8, 13])
def test_matmul_is_its_float64_statement(level: str, m: int) -> None:
    ops = _ops(level)
    raw = _raw(10 + m)
    w = _pack(ops, raw, SHAPE)
    weights = dequantize(raw, GGMLType.Q6_K, SHAPE).double()
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(m, SHAPE[1], generator=torch.Generator().manual_seed(m)) * 3).to(dtype)
        y = ops.q6k_vnni_mm(x, w.packed, w.scales_and_zeros)
        assert y.dtype == torch.float32 and y.shape == (m, SHAPE[0])
        want, bound = _statement(x, weights)
        err = (y.double() - want).abs()
        assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"


@pytest.mark.parametrize("level", LEVELS)
def test_matmul_close_to_unquantized_activations(level: str) -> None:
    """|y - W x| <= sum_k |W| |x - d xq| + float32 sums, with |x - d xq| <= d / 2 per element."""
    ops = _ops(level)
    shape = (32, 1280)  # another odd shape: 5 super-blocks
    raw = _raw(30, shape)
    w = _pack(ops, raw, shape)
    weights = dequantize(raw, GGMLType.Q6_K, shape).double()
    x = torch.randn(5, shape[1], generator=torch.Generator().manual_seed(3))
    exact = F.linear(x.double(), weights)
    d = x.double().abs().view(5, -1, 32).amax(-1) / 127
    bound = F.linear(d.repeat_interleave(32, dim=1) / 2, weights.abs()) + 1e-5 * F.linear(
        x.double().abs(), weights.abs()
    )
    err = (int4.int4_linear(x, w).double() - exact).abs()
    assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"


@pytest.mark.parametrize("level", LEVELS)
def test_dequantize_is_ggufs_weight(level: str) -> None:
    ops = _ops(level)
    raw = _raw(20)
    w = _pack(ops, raw, SHAPE)
    want = dequantize(raw, GGMLType.Q6_K, SHAPE)
    assert torch.equal(ops.q6k_vnni_dequantize(w.packed, w.scales_and_zeros, torch.float32), want)
    assert torch.equal(ops.q6k_vnni_dequantize(w.packed, w.scales_and_zeros, torch.bfloat16), want.to(torch.bfloat16))


def test_every_level_returns_the_same_bits() -> None:
    here = [level for level in LEVELS if native.level_ops(level) is not None]
    if len(here) < 2:
        pytest.skip(f"fewer than two kernel levels here: {native.kernel_level_skipped()}")
    raw = _raw(40)
    packs = [_pack(native.level_ops(level), raw, SHAPE) for level in here]
    assert all(
        torch.equal(p.packed, packs[0].packed) and torch.equal(p.scales_and_zeros, packs[0].scales_and_zeros)
        for p in packs[1:]
    )
    gen = torch.Generator().manual_seed(7)
    w = packs[0]
    for m in (1, 2, 3, 5, 8, 13, 23):
        x = torch.randn(m, SHAPE[1], generator=gen) * 2
        ys = [native.level_ops(level).q6k_vnni_mm(x, w.packed, w.scales_and_zeros) for level in here]
        assert all(torch.equal(y, ys[0]) for y in ys[1:]), m


@pytest.mark.parametrize("level", LEVELS)
def test_inf_nan_subnormal_d(level: str) -> None:
    """A row whose f16 d is inf or NaN comes out non-finite; every other row (subnormal and
    largest finite d included) is its float64 statement."""
    ops = _ops(level)
    shape = (48, 512)
    raw = _raw(5, shape).clone()
    blocks = raw.view(-1, 210)  # 2 blocks a row
    odd = [(5, 0x7C00), (40, 0x7E00), (77, 0x0001), (11, 0x7BFF), (60, 0x03FF), (90, 0xFC00)]
    for block, bits in odd:
        blocks[block, 208:210] = torch.tensor([bits & 0xFF, bits >> 8], dtype=torch.uint8)
    bad = {5 // 2, 40 // 2, 90 // 2}
    w = _pack(ops, raw, shape)
    x = torch.randn(3, shape[1], generator=torch.Generator().manual_seed(1))
    y = ops.q6k_vnni_mm(x, w.packed, w.scales_and_zeros)
    good = torch.tensor([r not in bad for r in range(shape[0])])
    assert not y[:, ~good].isfinite().any()
    want, bound = _statement(x, dequantize(raw, GGMLType.Q6_K, shape).double()[good])
    err = (y[:, good].double() - want).abs()
    assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"


def test_bad_shapes_are_refused() -> None:
    ops = next((native.level_ops(level) for level in LEVELS if native.level_ops(level) is not None), None)
    if ops is None:
        pytest.skip(f"no kernel level loads here: {native.kernel_level_skipped()}")
    raw = _raw(1, (16, 256))
    with pytest.raises(RuntimeError, match="multiple of 16"):
        ops.q6k_vnni_pack_ggml(raw, 8, 512)
    with pytest.raises(RuntimeError, match="bytes"):
        ops.q6k_vnni_pack_ggml(raw[:-1].contiguous(), 16, 256)
    w = _pack(ops, raw, (16, 256))
    with pytest.raises(RuntimeError, match="shapes do not fit"):
        ops.q6k_vnni_mm(torch.randn(2, 512), w.packed, w.scales_and_zeros)
    with pytest.raises(ValueError, match="vnni_q6k"):
        int4.pack_ggml_q6k_blocks(raw, 8, 512)
