"""llamita's Q4_K kernel in Q4_K's own scales (layout "vnni_k", kernels/csrc/q4k_vnni.cpp).

Independent references:
- the weights: dequantizing the layout gives, bit for bit, what `quants.dequantize` (itself
  bit-exact with the gguf package, test_quants.py) gives for the same Q4_K bytes;
- the arithmetic: a float64 re-statement of the documented algorithm over the layout's own
  integers, within a derived float32 bound (as test_q4_vnni.py);
- batched rows against one row at a time, bit for bit, and joined weights (fused q/k/v,
  gate/up) against each part alone.
"""

from __future__ import annotations

import pytest
import torch

from llamita.kernels import int4, native
from llamita.kernels.int4 import concat_int4, dequantize_int4, int4_linear
from llamita.weights.q4_pack import pack_q4
from llamita.weights.quants import GGMLType, dequantize, q4_k_rows, quantize
from tests.vnni_reference import int8_activations

pytestmark = pytest.mark.skipif(
    not native.vnni_kernels(), reason=f"llamita's VNNI kernel is unavailable: {native.vnni_kernels_skipped()}"
)

E32 = 2.0**-24
Q4_K = GGMLType.Q4_K


def _random_q4_k(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Valid Q4_K bytes of every kind: random codes, 6-bit scales and mins, and d, dmin random
    finite halves (subnormals and negatives included)."""
    gen = torch.Generator().manual_seed(seed)
    n_blocks = shape[0] * shape[1] // 256
    blocks = torch.randint(0, 256, (n_blocks, 144), generator=gen, dtype=torch.uint8)
    halves = torch.randint(0, 1 << 16, (n_blocks, 2), generator=gen, dtype=torch.int32)
    halves = torch.where((halves & 0x7C00) == 0x7C00, halves & ~0x4000, halves)  # finite only
    blocks[:, :4] = torch.stack([halves & 0xFF, halves >> 8], dim=-1).reshape(n_blocks, 4).to(torch.uint8)
    return blocks.reshape(-1)


def _weight(shape: tuple[int, int], seed: int) -> tuple[torch.Tensor, int4.Int4Weight]:
    raw = quantize(torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05, Q4_K)
    return raw, pack_q4(raw, Q4_K, shape, "vnni_k")


def test_default_for_q4_k_and_smaller_than_vnni() -> None:
    raw, w = _weight((48, 512), 1)
    assert pack_q4(raw, Q4_K, (48, 512)).layout == "vnni_k" == w.layout
    other = pack_q4(raw, Q4_K, (48, 512), "vnni")
    assert w.packed.equal(other.packed)  # the same codes, only the scales differ
    assert w.nbytes * 8 / (48 * 512) == 4.625 and other.nbytes * 8 / (48 * 512) == 5.0
    with pytest.raises(ValueError, match="holds Q4_K"):
        pack_q4(quantize(torch.randn(48, 512), GGMLType.Q4_0), GGMLType.Q4_0, (48, 512), "vnni_k")
    with pytest.raises(ValueError, match="does not fit"):
        pack_q4(quantize(torch.randn(40, 512), Q4_K), Q4_K, (40, 512))  # 40 rows: not 16-row blocks


@pytest.mark.parametrize("shape", [(176, 512), (32, 2304)])
def test_weights_are_gguf_bit_for_bit(shape: tuple[int, int]) -> None:
    raw = _random_q4_k(shape, shape[1])
    w = pack_q4(raw, Q4_K, shape, "vnni_k")
    ref = dequantize(raw, Q4_K, shape)
    got = dequantize_int4(w, torch.float32)
    assert torch.equal(got.view(torch.int32), ref.view(torch.int32))  # signed zeros too
    assert torch.equal(dequantize_int4(w, torch.bfloat16), ref.to(torch.bfloat16))  # rounded once
    assert torch.equal(int4._dequantize_vnni_k_torch(w, torch.float32), ref)  # the torch statement
    assert torch.equal(int4._dequantize_vnni_k_torch(w, torch.float16), ref.half())


def test_meta_round_trips() -> None:
    gen = torch.Generator().manual_seed(5)
    sc, mn = (torch.randint(0, 64, (32, 16), generator=gen, dtype=torch.uint8) for _ in range(2))
    d, dmin = (torch.randn(32, 2, generator=gen).half() for _ in range(2))
    meta = int4._vnni_k_meta(sc, mn, d, dmin)
    assert meta.shape == (2, 2, 320) and meta.dtype == torch.uint8
    back = int4._vnni_k_parts(meta)
    assert all(torch.equal(a, b) for a, b in zip(back, (sc, mn, d, dmin)))
    # Sub-block j of the first super-block: 16 rows' scales in one 16-byte run.
    assert torch.equal(meta[0, 0, 16 * 3 : 16 * 4], sc[:16, 3])


def _emulate(x: torch.Tensor, w: int4.Int4Weight) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's algorithm in float64: (y, bound of its float32 error)."""
    g = x.shape[1] // 32
    xq, d = int8_activations(x)
    q = int4._vnni_decode(w.packed).double().view(w.out_features, g, 32)
    sc, mn, dd, dmin = int4._vnni_k_parts(w.scales_and_zeros)
    s = dd.double().repeat_interleave(8, dim=1) * sc.double()  # (n, g), exact
    mins = dmin.double().repeat_interleave(8, dim=1) * mn.double()
    term1 = torch.einsum("mgk,ngk->mng", xq, q) * s.unsqueeze(0) * d.unsqueeze(1)
    term2 = mins.unsqueeze(0) * (d * xq.sum(-1)).unsqueeze(1)
    y = (term1 - term2).sum(-1)
    bound = (8 + g) * E32 * (term1.abs() + term2.abs()).sum(-1)
    return y, bound


@pytest.mark.parametrize("m", [1, 2, 3, 8, 13])
def test_arithmetic_matches_its_statement(m: int) -> None:
    _, w = _weight((96, 768), 20 + m)
    x = torch.randn(m, 768, generator=torch.Generator().manual_seed(m)) * 3
    y = int4_linear(x, w)
    assert y.dtype == torch.float32 and y.shape == (m, 96)
    want, bound = _emulate(x, w)
    err = (y.double() - want).abs()
    assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"


def test_closer_to_gguf_than_the_bfloat16_layout() -> None:
    """Same codes and activations; only vnni's bfloat16 scales differ from GGML's weights."""
    raw, w = _weight((160, 1024), 7)
    x = torch.randn(4, 1024, generator=torch.Generator().manual_seed(8))
    exact = x.double() @ dequantize(raw, Q4_K, (160, 1024)).double().T
    err_k = (int4_linear(x, w).double() - exact).abs().max()
    err_v = (int4_linear(x, pack_q4(raw, Q4_K, (160, 1024), "vnni")).double() - exact).abs().max()
    assert err_k < err_v and err_k / exact.abs().max() < 2**-6


def test_batched_rows_equal_one_at_a_time() -> None:
    _, w = _weight((64, 512), 40)
    x = torch.randn(23, 512, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    assert torch.equal(int4_linear(x, w), torch.cat([int4_linear(x[i : i + 1], w) for i in range(23)]))


def test_joined_weights_equal_their_parts() -> None:
    parts = [_weight((n, 512), 50 + n)[1] for n in (48, 16, 32)]
    joined = concat_int4(parts)
    assert joined is not None and joined.layout == "vnni_k" and joined.out_features == 96
    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(6))
    assert torch.equal(int4_linear(x, joined), torch.cat([int4_linear(x, p) for p in parts], dim=-1))
    assert torch.equal(dequantize_int4(joined), torch.cat([dequantize_int4(p) for p in parts]))
    mixed = [parts[0], pack_q4(quantize(torch.randn(16, 512), GGMLType.Q4_0), GGMLType.Q4_0, (16, 512), "vnni")]
    assert concat_int4(mixed) is None  # different layouts do not join


def test_operand_checks() -> None:
    _, w = _weight((32, 512), 60)
    with pytest.raises(RuntimeError, match="shapes do not fit"):
        native.kernel_ops().q4k_vnni_mm(torch.randn(1, 256).bfloat16(), w.packed, w.scales_and_zeros)
    with pytest.raises(RuntimeError, match="meta must be"):
        native.kernel_ops().q4k_vnni_mm(torch.randn(1, 512).bfloat16(), w.packed, w.scales_and_zeros[:1])
    with pytest.raises(RuntimeError, match="scales must be contiguous"):
        native.kernel_ops().q4k_vnni_mm(torch.randn(1, 512).bfloat16(), w.packed, w.scales_and_zeros.float())
    with pytest.raises(RuntimeError, match="dtype must be"):
        native.kernel_ops().q4k_vnni_dequantize(w.packed, w.scales_and_zeros, torch.float16)


def test_native_load_packing_is_pack_int4_k() -> None:
    """`q4k_vnni_pack_ggml` (the loader's path) writes the bytes `pack_int4_k` writes from
    `quants.q4_k_rows`, for every 6-bit scale and min and odd f16 d / dmin (inf, NaN too)."""
    shape = (48, 768)  # 3 blocks of 16 rows, 3 super-blocks
    raw = _random_q4_k(shape, 9).clone()
    blocks = raw.view(-1, 144)
    for i, bits in enumerate([0x7C00, 0x0001, 0x7E00, 0x7BFF, 0xBC00, 0x8000]):
        blocks[5 + 17 * i, 0:2] = torch.tensor([bits & 0xFF, bits >> 8], dtype=torch.uint8)
        blocks[3 + 19 * i, 2:4] = torch.tensor([bits & 0xFF, bits >> 8], dtype=torch.uint8)
    got = int4.pack_ggml_k_blocks(raw, *shape)
    want = int4.pack_int4_k(*shape, q4_k_rows(raw, shape))
    assert got.layout == want.layout == "vnni_k"
    assert torch.equal(got.packed, want.packed) and torch.equal(got.scales_and_zeros, want.scales_and_zeros)
    assert pack_q4(raw, Q4_K, shape).packed.equal(got.packed)  # what the loader calls
    with pytest.raises(RuntimeError, match="bytes for a"):
        int4.pack_ggml_k_blocks(raw[:-1], *shape)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        int4.pack_ggml_k_blocks(raw, 24, 1536)
