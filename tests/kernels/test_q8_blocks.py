"""GGML Q8_0 in its own blocks (kernels/int8.py layout "vnni_q8b", the `q8b_vnni_mm` kernel of
every SIMD level), against independent references:
- the packed weight, whole or looked up by rows (the tied embedding), equals `gguf`'s
  dequantization of the file bytes exactly (odd scales and -128 codes included);
- the matmul at every level this CPU has is its float64 statement, llama.cpp's
  `ggml_vec_dot_q8_0_q8_0` arithmetic: y[m, n] = sum_g d_w[n, g] d_x[m, g] sum_k w xq, with the
  activations quantized per 32 as documented (tests/vnni_reference.py), within a bound on the
  kernel's float32 roundings derived from the magnitudes of its terms;
- every level returns the same bits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from llamita.kernels import int8, native
from llamita.model.embedding import Int8Embedding
from llamita.model.linear import Int8Linear, fuse_linears
from llamita.weights.quants import GGMLType, quantize
from tests.vnni_reference import int8_activations

E32 = 2.0**-24  # float32 unit roundoff
LEVELS = [lv.name for lv in native.KERNEL_LEVELS]
SHAPE = (80, 352)  # 5 blocks of 16 rows, 11 groups of 32: neither a power of two


def _ops(level: str):
    ops = native.level_ops(level)
    if ops is None:
        pytest.skip(f"kernel level {level} is unavailable here: {native.kernel_level_skipped(level)}")
    return ops


def _need_kernels() -> None:
    if not native.vnni_kernels():
        pytest.skip(f"no kernel level loads here: {native.vnni_kernels_skipped()}")


def _raw(shape: tuple[int, int], seed: int, odd: bool = False) -> torch.Tensor:
    """Q8_0 file bytes of a random weight; with `odd`, some blocks' f16 d set to inf, -inf, NaN,
    subnormals and the largest finite value, and some codes to -128 (GGML's quantizer never
    writes it; a file may)."""
    gen = torch.Generator().manual_seed(seed)
    raw = quantize(torch.randn(shape, generator=gen) * 0.05, GGMLType.Q8_0).clone()
    blocks = raw.view(-1, int8.Q8_0_BLOCK_BYTES)
    blocks[::7, 2 + 5] = 0x80  # code -128
    blocks[3, 2:] = 0x80  # a whole block of -128
    if odd:
        for block, bits in [(5, 0x7C00), (40, 0xFC00), (77, 0x7E00), (11, 0x7BFF), (60, 0x0001), (61, 0x03FF)]:
            blocks[block, :2] = torch.tensor([bits & 0xFF, bits >> 8], dtype=torch.uint8)
    return raw


def _gguf_weight(raw: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The weight as `gguf` dequantizes the file bytes (float32)."""
    dense = gguf_dequantize(raw.numpy().reshape(shape[0], -1), GGMLQuantizationType.Q8_0)
    return torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)).view(shape)


def _pack(raw: torch.Tensor, shape: tuple[int, int]) -> int8.Int8Weight:
    rows = raw.view(shape[0], -1)
    return int8.q8_0_blocks(*shape, lambda a, b: rows[a:b])


def _statement(x: torch.Tensor, raw: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 y = sum_g d_w d_x sum_k w xq from the file bytes, and the bound of the kernel's
    float32 roundings: the scale product and the fused add per group, then one per group in the
    sum over g (and an underflow of the scale product to a subnormal per group)."""
    n, k = shape
    blocks = raw.view(n, k // 32, int8.Q8_0_BLOCK_BYTES)
    dw = blocks[..., :2].contiguous().view(torch.float16).double().view(n, k // 32)
    w = blocks[..., 2:].contiguous().view(torch.int8).double()  # (n, g, 32)
    xq, dx = int8_activations(x)  # (m, g, 32), (m, g)
    sums = torch.einsum("mgk,ngk->mng", xq, w)
    terms = sums * dw.unsqueeze(0) * dx.unsqueeze(1)
    size = torch.einsum("mgk,ngk->mng", xq.abs(), w.abs()) * dw.abs().unsqueeze(0) * dx.unsqueeze(1)
    return terms.sum(-1), (8 + k // 32) * E32 * size.sum(-1) + (k // 32) * 2.0**-149


def test_packed_weight_is_gguf_dequantization_exactly() -> None:
    _need_kernels()
    raw = _raw(SHAPE, 1, odd=True)
    w = _pack(raw, SHAPE)
    assert w.layout == "vnni_q8b" and w.scales.dtype == torch.float16
    want = _gguf_weight(raw, SHAPE)
    got = int8.dequantize_int8(w, torch.float32)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # bits: NaN compares too
    assert w.nbytes == SHAPE[0] * SHAPE[1] * 34 // 32  # the file's own size


@pytest.mark.parametrize("level", LEVELS)
def test_dequantize_op_is_gguf_dequantization(level: str) -> None:
    """`q8b_vnni_dequantize` (prefill's dense weight) at every level: float32 bit for bit, and
    bfloat16 as that float32 rounded to nearest even (NaN stays NaN)."""
    ops = _ops(level)
    raw = _raw(SHAPE, 13, odd=True)
    w = _pack(raw, SHAPE)
    want = _gguf_weight(raw, SHAPE)
    got = ops.q8b_vnni_dequantize(w.qweight, w.scales, torch.float32)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    got16 = ops.q8b_vnni_dequantize(w.qweight, w.scales, torch.bfloat16)
    nan = want.isnan()
    assert torch.equal(got16.isnan(), nan)
    assert torch.equal(got16[~nan], want[~nan].to(torch.bfloat16))


def test_embedding_rows_are_gguf_dequantization_exactly() -> None:
    _need_kernels()
    raw = _raw(SHAPE, 2, odd=True)
    want = _gguf_weight(raw, SHAPE)
    emb = Int8Embedding(_pack(raw, SHAPE), torch.float32)
    ids = torch.tensor([[0, 79, 17, 17], [64, 3, 15, 16]])
    got = emb(ids)
    assert got.shape == (2, 4, SHAPE[1]) and got.dtype == torch.float32
    assert torch.equal(got.view(torch.int32), want[ids].view(torch.int32))
    # bfloat16 rows: gguf's float32 values rounded once
    got = Int8Embedding(_pack(raw, SHAPE), torch.bfloat16)(ids)
    assert torch.equal(got.view(torch.int16), want[ids].to(torch.bfloat16).view(torch.int16))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("m", [1, 2, 3, 8, 13])
def test_matmul_is_its_float64_statement(level: str, m: int) -> None:
    ops = _ops(level)
    raw = _raw(SHAPE, 10 + m)
    w = _pack(raw, SHAPE)
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(m, SHAPE[1], generator=torch.Generator().manual_seed(m)) * 3).to(dtype)
        y = ops.q8b_vnni_mm(x, w.qweight, w.scales)
        assert y.dtype == torch.float32 and y.shape == (m, SHAPE[0])
        want, bound = _statement(x, raw, SHAPE)
        err = (y.double() - want).abs()
        assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"


@pytest.mark.parametrize("level", LEVELS)
def test_inf_nan_subnormal_scales(level: str) -> None:
    """A row with an inf/NaN block scale comes out non-finite; every other row (subnormal and
    largest-finite scales, -128 codes) is its float64 statement."""
    ops = _ops(level)
    raw = _raw(SHAPE, 3, odd=True)
    w = _pack(raw, SHAPE)
    bad = ~torch.isfinite(_gguf_weight(raw, SHAPE)).all(-1)
    assert bad.sum() == 3
    x = torch.randn(3, SHAPE[1], generator=torch.Generator().manual_seed(4))
    y = ops.q8b_vnni_mm(x, w.qweight, w.scales)
    assert not y[:, bad].isfinite().any()
    want, bound = _statement(x, raw, SHAPE)
    err = (y[:, ~bad].double() - want[:, ~bad]).abs()
    assert (err <= bound[:, ~bad]).all(), f"max err/bound {(err / bound[:, ~bad]).max():.3g}"


def test_every_level_returns_the_same_bits() -> None:
    here = [level for level in LEVELS if native.level_ops(level) is not None]
    if len(here) < 2:
        pytest.skip(f"fewer than two kernel levels here: {native.kernel_level_skipped()}")
    raw = _raw(SHAPE, 5, odd=True)
    w = _pack(raw, SHAPE)
    gen = torch.Generator().manual_seed(7)
    for m in (1, 2, 3, 5, 8, 13, 23):
        x = torch.randn(m, SHAPE[1], generator=gen) * 2
        ys = [native.level_ops(level).q8b_vnni_mm(x, w.qweight, w.scales) for level in here]
        assert all(torch.equal(y.view(torch.int32), ys[0].view(torch.int32)) for y in ys[1:]), m


def test_linear_and_fused_parts() -> None:
    """Int8Linear over a "vnni_q8b" weight is the kernel's product; fused with another, each
    part's output is its own alone (the scales are sliced by 16-row blocks)."""
    _need_kernels()
    a_raw, b_raw = _raw((48, 352), 8), _raw((32, 352), 9)
    a, b = Int8Linear(_pack(a_raw, (48, 352))), Int8Linear(_pack(b_raw, (32, 352)))
    x = torch.randn(2, 352, generator=torch.Generator().manual_seed(5))
    want_a, bound = _statement(x, a_raw, (48, 352))
    assert ((a(x).double() - want_a).abs() <= bound).all()
    alone = (a(x), b(x))
    fused = fuse_linears([a, b])
    assert fused is not None
    for got, ref in zip(fused(x), alone):
        assert torch.equal(got, ref)
    for got, ref in zip((a(x), b(x)), alone):  # the parts now read views of the joined weight
        assert torch.equal(got, ref)


def test_bad_shapes_are_refused() -> None:
    _need_kernels()
    with pytest.raises(ValueError, match="vnni_q8b"):
        int8.q8_0_blocks(24, 64, lambda a, b: torch.zeros((b - a, 68), dtype=torch.uint8))
    w = _pack(_raw(SHAPE, 6), SHAPE)
    with pytest.raises(RuntimeError, match="scales"):
        native.kernel_ops().q8b_vnni_mm(torch.zeros(1, SHAPE[1]), w.qweight, w.scales[:2])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_loader_keeps_q8_0_blocks(dtype: torch.dtype) -> None:
    """weights/gguf.py's int8 conversion takes a Q8_0 weight in its own blocks (exactly the
    file's weights) and gives every byte range of the file back as it goes; a Q5_0 weight stays
    per row."""
    from llamita.weights.gguf import _int8

    _need_kernels()
    raw = _raw(SHAPE, 11)
    released: list[tuple[int, int]] = []
    w = _int8(raw, GGMLType.Q8_0, SHAPE, dtype, lambda a, b: released.append((a, b)))
    assert w.layout == "vnni_q8b"
    assert torch.equal(int8.dequantize_int8(w, torch.float32), _gguf_weight(raw, SHAPE))
    assert released[0][0] == 0 and released[-1][1] == raw.numel()
    assert all(a[1] == b[0] for a, b in zip(released, released[1:]))
    q5 = quantize(torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)), GGMLType.Q5_0)
    assert _int8(q5, GGMLType.Q5_0, SHAPE, dtype).layout == "vnni"


def test_without_a_kernel_level_q8_0_stays_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """LLAMITA_ISA=generic / LLAMITA_NATIVE_KERNELS=0 (no level loads): the loader keeps the
    per-row int8 of torch's kernel, within half a per-row step of gguf's weights."""
    from llamita.weights.gguf import _int8

    monkeypatch.setattr(native, "vnni_kernels", lambda: False)
    raw = _raw(SHAPE, 12)
    w = _int8(raw, GGMLType.Q8_0, SHAPE, torch.float32)
    assert w.layout == "torch"
    want = _gguf_weight(raw, SHAPE)
    step = want.abs().amax(1, keepdim=True) / 127
    assert ((int8.dequantize_int8(w, torch.float32) - want).abs() <= step / 2 * (1 + 1e-6)).all()
