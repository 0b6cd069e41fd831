"""portable.cpp's packing and dequantization in plain C++ (what the NEON level registers) against
the x86 levels' SIMD ones, which tests/kernels/test_kernel_levels.py and test_q4k_vnni.py check
against gguf and float64 statements: the same bytes and the same values, odd f16 scales (inf,
NaN, subnormal, largest finite) included. Runs on x86, where portable.cpp's ops are registered
as portable_*."""

from __future__ import annotations

import pytest
import torch

from llamita.kernels import native
from llamita.weights.quants import GGMLType, quantize
from tests.kernels.test_kernel_levels import _odd_scale_blocks

SHAPE = (48, 512)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal (NaN included)."""
    if a.is_floating_point():
        bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16}[a.dtype]
        a, b = a.view(bits), b.view(bits)
    return torch.equal(a, b)


def _ops():
    for lv in native.KERNEL_LEVELS:
        if lv.machine == "x86_64" and native.level_ops(lv.name) is not None:
            return native.level_ops(lv.name)
    pytest.skip(f"no x86 kernel level loads here: {native.kernel_level_skipped()}")


@pytest.mark.parametrize("t", [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K], ids=lambda t: t.name)
def test_portable_pack_and_dequantize_are_the_simd_ones(t: GGMLType) -> None:
    ops = _ops()
    for raw in (
        quantize(torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)) * 0.05, t),
        _odd_scale_blocks(t, SHAPE)[0],
    ):
        if t == GGMLType.Q4_K:
            want, got = ops.q4k_vnni_pack_ggml(raw, *SHAPE), ops.portable_q4k_vnni_pack_ggml(raw, *SHAPE)
            dense, portable_dense = ops.q4k_vnni_dequantize, ops.portable_q4k_vnni_dequantize
        else:
            has_min = t == GGMLType.Q4_1
            want = ops.q4_vnni_pack_ggml(raw, *SHAPE, has_min)
            got = ops.portable_q4_vnni_pack_ggml(raw, *SHAPE, has_min)
            dense, portable_dense = ops.q4_vnni_dequantize, ops.portable_q4_vnni_dequantize
        assert all(_same(a, b) for a, b in zip(want, got))
        for dtype in (torch.float32, torch.bfloat16):
            assert _same(portable_dense(*got, dtype), dense(*want, dtype)), dtype


def test_portable_int8_dequantize_is_the_simd_one() -> None:
    ops = _ops()
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(-127, 128, (48, 96), generator=gen, dtype=torch.int8)
    scales = torch.tensor([float("inf"), float("nan"), 1e-40, 3.0e38] + [0.01] * 44).to(torch.bfloat16)
    for dtype in (torch.float32, torch.bfloat16):
        want = ops.q8_vnni_dequantize(codes, scales, dtype)
        assert _same(ops.portable_q8_vnni_dequantize(codes, scales, dtype), want)
