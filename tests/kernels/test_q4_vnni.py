"""llamita's int4 x int8 VNNI kernel (layout "vnni", kernels/csrc/q4_vnni.cpp).

Three independent references:
- the weights: dequantizing the "vnni" layout gives exactly the weights of torch's layout
  (same codes, same bfloat16 scale and zero), which test_int4.py checks against gguf;
- the arithmetic: a float64 re-statement of the documented algorithm (x rounded to bfloat16,
  quantized to int8 per 32 with round-half-even, integer dot products, then scale), which the
  kernel must match up to its float32 rounding (derived bound, not tuned);
- the exact product with GGUF's weights, within the error activation quantization implies
  (|x - d xq| <= d / 2 per element, d = max|x| / 127 of its group).
Batched rows are checked bit for bit against one row at a time (every tile size of the kernel).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from llamita.kernels import int4, native
from llamita.kernels.int4 import dequantize_int4, int4_linear
from llamita.weights.q4_pack import pack_q4
from llamita.weights.quants import GGMLType, dequantize, q4_affine_rows, quantize
from tests.vnni_reference import int8_activations

pytestmark = pytest.mark.skipif(
    not native.vnni_kernels(), reason=f"llamita's VNNI kernel is unavailable: {native.vnni_kernels_skipped()}"
)

U = 2.0**-8  # bfloat16 unit roundoff
E32 = 2.0**-24  # float32 unit roundoff
Q4 = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K]


def _weight(t: GGMLType, shape: tuple[int, int], seed: int) -> tuple[torch.Tensor, int4.Int4Weight]:
    gen = torch.Generator().manual_seed(seed)
    raw = quantize(torch.randn(shape, generator=gen) * 0.05, t)
    return raw, pack_q4(raw, t, shape, "vnni")


def _emulate(x: torch.Tensor, w: int4.Int4Weight) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's algorithm in float64 over its own integers: (y, bound of float32 error)."""
    g = x.shape[1] // 32
    xq, d = int8_activations(x)
    q = int4._vnni_decode(w.packed).double().view(w.out_features, g, 32)
    s, z = (t.double() for t in int4._vnni_scale_zero(w.scales_and_zeros))  # (n, g)
    dot = torch.einsum("mgk,ngk->mng", xq, q)  # exact integers
    xsum = xq.sum(-1)  # (m, g)
    term1 = dot * s.unsqueeze(0) * d.unsqueeze(1)
    term2 = (z - 8 * s).unsqueeze(0) * (d * xsum).unsqueeze(1)
    y = (term1 + term2).sum(-1)
    # Per group a handful of float32 roundings of each term, then g float32 additions.
    bound = (8 + g) * E32 * (term1.abs() + term2.abs()).sum(-1)
    return y, bound


@pytest.mark.parametrize("t", Q4, ids=lambda t: t.name)
def test_layout_holds_the_same_weights_as_torchs(t: GGMLType) -> None:
    if int4._probe_layout() is None:
        pytest.skip("torch's int4 layout is unavailable to compare with")
    shape = (176, 512)  # 11 blocks of 16 rows
    raw, w = _weight(t, shape, int(t))
    other = pack_q4(raw, t, shape, "torch")
    assert torch.equal(dequantize_int4(w, torch.float32), dequantize_int4(other, torch.float32))
    assert torch.equal(dequantize_int4(w), dequantize_int4(other))  # bfloat16: rounded once


@pytest.mark.parametrize("t", Q4, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [1, 2, 3, 8, 13])
def test_arithmetic_matches_its_statement(t: GGMLType, m: int) -> None:
    raw, w = _weight(t, (96, 512), 20 + m)
    x = torch.randn(m, 512, generator=torch.Generator().manual_seed(m)) * 3
    y = int4_linear(x, w)
    assert y.dtype == torch.float32 and y.shape == (m, 96)
    want, bound = _emulate(x, w)
    err = (y.double() - want).abs()
    assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"


@pytest.mark.parametrize("t", Q4, ids=lambda t: t.name)
def test_close_to_the_exact_product(t: GGMLType) -> None:
    shape = (160, 1024)
    raw, w = _weight(t, shape, 30 + int(t))
    x = torch.randn(4, shape[1], generator=torch.Generator().manual_seed(3))
    exact_w = dequantize(raw, t, shape).double()
    exact = F.linear(x.double(), exact_w)
    ours_w = dequantize_int4(w, torch.float32).double()
    d = x.to(torch.bfloat16).double().abs().view(4, -1, 32).amax(-1) / 127  # (m, g)
    per_x = U * x.double().abs() + d.repeat_interleave(32, dim=1) / 2  # |x - d xq| per element
    bound = (
        F.linear(per_x, ours_w.abs())
        + F.linear(x.double().abs(), (ours_w - exact_w).abs())
        + 1e-5 * F.linear(x.double().abs(), ours_w.abs())
    )  # + the float32 sums
    err = (int4_linear(x, w).double() - exact).abs()
    assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"
    assert (err.max() / exact.abs().max()).item() < 2**-6  # observed 4.5e-3 to 6.5e-3


def test_batched_rows_equal_one_at_a_time() -> None:
    _, w = _weight(GGMLType.Q4_1, (64, 256), 40)
    x = torch.randn(23, 256, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    batched = int4_linear(x, w)  # tiles of 8, 8, 4, 2, 1 rows
    assert torch.equal(batched, torch.cat([int4_linear(x[i : i + 1], w) for i in range(23)]))


def test_edge_inputs() -> None:
    _, w = _weight(GGMLType.Q4_0, (32, 64), 50)
    assert torch.equal(int4_linear(torch.zeros(2, 64), w), torch.zeros(2, 32))  # max|x| = 0
    assert int4_linear(torch.randn(0, 64), w).shape == (0, 32)
    x = torch.randn(5, 3, 64)
    assert torch.equal(int4_linear(x.transpose(0, 1), w), int4_linear(x, w).transpose(0, 1))
    with pytest.raises(ValueError, match="features"):
        int4_linear(torch.randn(2, 63), w)
    with pytest.raises(RuntimeError, match="shapes do not fit"):
        native.kernel_ops().q4_vnni_mm(torch.randn(1, 32).bfloat16(), w.packed, w.scales_and_zeros)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dequantize_kernel_is_its_torch_statement(dtype: torch.dtype) -> None:
    _, w = _weight(GGMLType.Q4_K, (96, 512), 60)
    # Extremes: a NaN scale (its group turns NaN), a huge one (rounds to inf in bfloat16), a
    # scale whose products sit on bfloat16 ties (round half to even).
    sz = w.scales_and_zeros.clone()
    sz[0, 1, 0, 3], sz[2, 0, 0, 15], sz[4, 9, 0, 0] = float("nan"), 3.0e38, 1.0 + 2.0**-7
    w = int4.Int4Weight(w.packed, sz, w.out_features, w.in_features, w.group_size, "vnni")
    got = native.kernel_ops().q4_vnni_dequantize(w.packed, w.scales_and_zeros, dtype)
    want = int4._dequantize_vnni_torch(w, dtype)
    assert got.dtype == dtype and got.isnan().any()
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    nan = got.isnan()
    assert torch.equal(nan, want.isnan())  # NaN where torch has NaN (its bits may differ)
    assert torch.equal(got.view(bits)[~nan], want.view(bits)[~nan])  # the rest bit for bit, inf too
    with pytest.raises(RuntimeError, match="dtype must be"):
        native.kernel_ops().q4_vnni_dequantize(w.packed, w.scales_and_zeros, torch.float16)


def test_switched_off_and_built_in_a_fresh_cache(tmp_path) -> None:
    code = (
        "from llamita.kernels import native, int4; "
        "print(native.vnni_kernels(), int4.default_layout(), native.vnni_kernels_skipped())"
    )
    env = {**os.environ, "LLAMITA_NATIVE_KERNELS": "0"}
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert off.stdout.split()[:2] == ["False", "torch"] and "LLAMITA_NATIVE_KERNELS" in off.stdout
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    fresh = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert fresh.stdout.split() == ["True", "vnni", "None"], fresh.stderr
    assert list((tmp_path / "llamita" / "kernels").glob(f"{native.kernel_level()}-*.so"))  # nothing half-built
    assert not list((tmp_path / "llamita" / "kernels").glob("*tmp*"))


@pytest.mark.parametrize("t", [GGMLType.Q4_0, GGMLType.Q4_1], ids=lambda t: t.name)
def test_native_load_packing_is_pack_int4(t: GGMLType) -> None:
    """`q4_vnni_pack_ggml` (the loader's path for Q4_0 / Q4_1) writes the bytes that
    `pack_int4` writes from the blocks' codes, scales and zeros, odd f16 values included."""
    shape = (48, 160)  # 3 blocks of 16 rows, 5 groups
    gen = torch.Generator().manual_seed(int(t))
    raw = quantize(torch.randn(shape, generator=gen) * 0.05, t).clone()
    blocks = raw.view(-1, 18 if t == GGMLType.Q4_0 else 20)
    # f16 d / m: inf, a subnormal, a NaN, the largest finite, a negative, 1 + 2^-8 (a bfloat16 tie).
    for i, bits in enumerate([0x7C00, 0x0001, 0x7E00, 0x7BFF, 0xBC00, 0x3C04]):
        blocks[7 + 11 * i, 0:2] = torch.tensor([bits & 0xFF, bits >> 8], dtype=torch.uint8)
        if t == GGMLType.Q4_1:
            blocks[3 + 13 * i, 2:4] = torch.tensor([bits & 0xFF, bits >> 8], dtype=torch.uint8)
    got = int4.pack_ggml_blocks(raw, *shape, has_min=t == GGMLType.Q4_1)
    want = int4.pack_int4(*shape, q4_affine_rows(raw, t, shape), "vnni")
    assert torch.equal(got.packed, want.packed)
    g, w = got.scales_and_zeros, want.scales_and_zeros
    nan = g.isnan()
    assert nan.any() and torch.equal(nan, w.isnan())
    assert torch.equal(g.view(torch.int16)[~nan], w.view(torch.int16)[~nan])
    with pytest.raises(RuntimeError, match="bytes for a"):
        int4.pack_ggml_blocks(raw[:-1], *shape, has_min=t == GGMLType.Q4_1)
