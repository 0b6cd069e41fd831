"""llamita's int8 x int8 VNNI kernel (layout "vnni" of kernels/int8.py, kernels/csrc/q8_vnni.cpp).

Independent references, as for the int4 kernel (test_q4_vnni.py):
- the weights: the "vnni" layout holds exactly the codes and scales of torch's layout (whole
  weight and embedding-row lookups), and GGUF weights re-quantized either way dequantize alike;
- the arithmetic: a float64 re-statement of the documented algorithm (x rounded to bfloat16,
  quantized to int8 per 32 with round-half-even, exact integer dots, then scales), which the
  kernel must match up to its float32 rounding (derived bound, not tuned);
- the exact product with the same int8 weights, within the error activation quantization
  implies (|x - d xq| <= d / 2 per element, d = max|x| / 127 of its group).
Batched rows are checked bit for bit against one row at a time (every tile size of the kernel).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llamita.kernels import int8, native
from llamita.kernels.int8 import concat_int8, dequantize_int8, int8_linear, quantize_int8
from llamita.weights.quants import GGMLType, dequantize, quantize
from tests.vnni_reference import int8_activations

pytestmark = pytest.mark.skipif(
    not native.vnni_kernels(), reason=f"llamita's VNNI kernel is unavailable: {native.vnni_kernels_skipped()}"
)

U = 2.0**-8  # bfloat16 unit roundoff
E32 = 2.0**-24  # float32 unit roundoff


def _pair(shape: tuple[int, int], seed: int) -> tuple[int8.Int8Weight, int8.Int8Weight]:
    """The same random weight in both layouts."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05
    n, k = shape
    return (
        quantize_int8(n, k, lambda a, b: w[a:b], layout="vnni"),
        quantize_int8(n, k, lambda a, b: w[a:b], layout="torch"),
    )


def _emulate(x: torch.Tensor, w: int8.Int8Weight) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's algorithm in float64 over its own integers: (y, bound of float32 error)."""
    g = x.shape[1] // 32
    xq, d = int8_activations(x)
    q = int8._row_order(w.qweight).double().view(w.out_features, g, 32)
    terms = torch.einsum("mgk,ngk->mng", xq, q) * d.unsqueeze(1)  # exact integer dots, times d
    s = w.scales.double()
    y = terms.sum(-1) * s
    # One float32 rounding per group's fma, then one for the row scale.
    bound = (g + 4) * E32 * terms.abs().sum(-1) * s.abs()
    return y, bound


def test_layout_holds_the_same_weights_as_torchs(monkeypatch) -> None:
    monkeypatch.setattr(int8, "_CHUNK_WEIGHTS", 40 * 512)  # quantized in slices: 32 rows (vnni), 40
    vnni, torch_ = _pair((176, 512), 1)  # 11 blocks of 16 rows
    assert vnni.layout == "vnni" and torch_.layout == "torch"
    assert torch.equal(int8._row_order(vnni.qweight), torch_.qweight)
    assert torch.equal(vnni.scales, torch_.scales)
    assert torch.equal(dequantize_int8(vnni, torch.float32), dequantize_int8(torch_, torch.float32))
    ids = torch.tensor([[0, 15, 16, 175], [31, 3, 3, 100]])  # embedding lookups, any shape
    assert torch.equal(dequantize_int8(vnni, torch.bfloat16, ids), dequantize_int8(torch_, torch.bfloat16, ids))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dequantize_kernel_is_its_torch_statement(dtype: torch.dtype) -> None:
    vnni, torch_ = _pair((80, 1024), 2)
    scales = vnni.scales.clone()
    scales[5], scales[17] = float("nan"), 3.0e38  # a NaN row; a huge scale (inf in bfloat16)
    vnni, torch_ = int8.Int8Weight(vnni.qweight, scales, "vnni"), int8.Int8Weight(torch_.qweight, scales, "torch")
    got = native.kernel_ops().q8_vnni_dequantize(vnni.qweight, vnni.scales, dtype)
    want = torch_.qweight.to(dtype) * scales.to(dtype).unsqueeze(-1)  # row order, torch ops
    nan = got.isnan()
    assert got.dtype == dtype and torch.equal(nan, want.isnan()) and nan[5].all()
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    assert torch.equal(got.view(bits)[~nan], want.view(bits)[~nan])
    torch.testing.assert_close(dequantize_int8(vnni, dtype), got, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(RuntimeError, match="dtype must be"):
        native.kernel_ops().q8_vnni_dequantize(vnni.qweight, vnni.scales, torch.float16)


@pytest.mark.parametrize("t", [GGMLType.Q8_0, GGMLType.Q6_K, GGMLType.Q5_0], ids=lambda t: t.name)
def test_gguf_weights_requantize_alike(t: GGMLType) -> None:
    shape = (48, 512)
    raw = quantize(torch.randn(shape, generator=torch.Generator().manual_seed(int(t))) * 0.05, t).view(shape[0], -1)
    rows = lambda a, b: dequantize(raw[a:b].reshape(-1), t, (b - a, shape[1]))  # noqa: E731
    vnni = quantize_int8(*shape, rows, layout="vnni")
    assert torch.equal(
        dequantize_int8(vnni, torch.float32),
        dequantize_int8(quantize_int8(*shape, rows, layout="torch"), torch.float32),
    )


@pytest.mark.parametrize("m", [1, 2, 3, 8, 13])
def test_arithmetic_matches_its_statement(m: int) -> None:
    w, _ = _pair((96, 512), 20 + m)
    x = torch.randn(m, 512, generator=torch.Generator().manual_seed(m)) * 3
    y = int8_linear(x, w)
    assert y.dtype == torch.float32 and y.shape == (m, 96)
    want, bound = _emulate(x, w)
    err = (y.double() - want).abs()
    assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"


def test_close_to_the_exact_product() -> None:
    w, _ = _pair((160, 1024), 30)
    x = torch.randn(4, 1024, generator=torch.Generator().manual_seed(3))
    ws = dequantize_int8(w, torch.float64)
    exact = F.linear(x.double(), ws)
    d = x.to(torch.bfloat16).double().abs().view(4, -1, 32).amax(-1) / 127  # (m, g)
    per_x = U * x.double().abs() + d.repeat_interleave(32, dim=1) / 2  # |x - d xq| per element
    bound = F.linear(per_x, ws.abs()) + 1e-5 * F.linear(x.double().abs(), ws.abs())  # + float32 sums
    err = (int8_linear(x, w).double() - exact).abs()
    assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"
    assert (err.max() / exact.abs().max()).item() < 2**-6


def test_batched_rows_equal_one_at_a_time() -> None:
    w, _ = _pair((64, 256), 40)
    x = torch.randn(23, 256, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    batched = int8_linear(x, w)  # tiles of 8, 8, 4, 2, 1 rows
    assert torch.equal(batched, torch.cat([int8_linear(x[i : i + 1], w) for i in range(23)]))


def test_edge_inputs() -> None:
    w, _ = _pair((32, 64), 50)
    assert torch.equal(int8_linear(torch.zeros(2, 64), w), torch.zeros(2, 32))  # max|x| = 0
    assert int8_linear(torch.randn(0, 64), w).shape == (0, 32)
    x = torch.randn(5, 3, 64)
    assert torch.equal(int8_linear(x.transpose(0, 1), w), int8_linear(x, w).transpose(0, 1))
    with pytest.raises(RuntimeError, match="shapes do not fit"):
        native.kernel_ops().q8_vnni_mm(torch.randn(1, 32).bfloat16(), w.qweight, w.scales)
    with pytest.raises(RuntimeError, match="codes must be"):
        native.kernel_ops().q8_vnni_mm(torch.randn(1, 64).bfloat16(), w.qweight.view(torch.uint8), w.scales)


def test_which_weights_take_the_layout() -> None:
    w = torch.randn(40, 64)
    rows = lambda a, b: w[a:b]  # noqa: E731
    assert quantize_int8(32, 64, rows).layout == "vnni"  # the default where the kernel loads
    assert quantize_int8(40, 64, rows).layout == "torch"  # not whole 16-row blocks
    f32 = quantize_int8(32, 64, rows, torch.float32)  # float32 compute: the kernel too, bf16 scales
    assert f32.layout == "vnni" and f32.scales.dtype == torch.bfloat16
    assert quantize_int8(32, 64, rows, torch.float16).layout == "torch"
    with pytest.raises(ValueError, match="16"):
        quantize_int8(40, 64, rows, layout="vnni")
    with pytest.raises(ValueError, match="unknown"):
        quantize_int8(32, 64, rows, layout="avx")


def test_parts_join_and_stay_row_slices() -> None:
    a, a_torch = _pair((48, 128), 60)
    b, _ = _pair((16, 128), 61)
    joined = concat_int8([a, b])
    assert joined is not None and joined.layout == "vnni"
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(5))
    assert torch.equal(int8_linear(x, joined), torch.cat([int8_linear(x, a), int8_linear(x, b)], dim=-1))
    part = int8.Int8Weight(joined.qweight[48:], joined.scales[48:], "vnni")  # as FusedLinear slices
    assert torch.equal(int8_linear(x, part), int8_linear(x, b))
    assert concat_int8([a_torch, b]) is None  # layouts do not mix
