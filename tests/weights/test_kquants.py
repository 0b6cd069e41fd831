"""K-quant encoders (Q2_K..Q6_K) against llama.cpp's reference quantizers, byte for byte.

The independent reference is llama.cpp itself: tests/weights/data/kquants_llamacpp.npz holds the
bytes `quantize_row_q*_K_ref` wrote for `golden_inputs()` (how: data/README.md). Decoding goes
through gguf-py, a second independent implementation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType

from llamita.weights import kquants, quants
from llamita.weights.quants import BLOCK_SIZES, QUANTIZABLE, GGMLType, dequantize, quantize

K_TYPES = [GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]
GOLDEN = Path(__file__).parent / "data" / "kquants_llamacpp.npz"


def golden_inputs() -> np.ndarray:
    """(20, 512) float32, one distribution per row (two 256-weight blocks each).

    Drawn from numpy's legacy RandomState, whose streams are frozen, so the golden file's
    inputs never need storing; the file keeps their sha256 to catch any drift anyway.
    """
    rs = np.random.RandomState(2025)
    n = 512

    def g() -> np.ndarray:
        return rs.standard_normal(n)

    with_zero_groups = g()
    with_zero_groups[16:48] = 0.0  # zero sub-blocks inside a live block
    with_zero_groups[300:332] = 0.0
    rows = [
        g() * 0.02,  # weight-like gaussian
        rs.uniform(-1.0, 1.0, n),
        rs.standard_t(3, n) * 0.01,  # heavy tails, like real weights
        np.where(rs.rand(n) < 0.02, g() * 0.5, rs.laplace(0.0, 0.01, n)),  # rare outliers
        np.abs(g()) + 0.1,  # positive only: the K4 fits' min is clamped to 0
        -np.abs(g()),  # negative only
        np.zeros(n),  # all-zero blocks
        np.full(n, 0.7),  # constant blocks
        np.repeat(g()[:32], 16),  # every 16-weight sub-block constant, each a different value
        with_zero_groups,
        g() * (rs.rand(n) < 0.1),  # sparse
        np.round(g() * 4) / 4,  # on a grid: many exact rounding ties
        rs.randint(-3, 4, n).astype(np.float64),  # small integers
        g() * 1e-6,  # tiny
        g() * 1e-20,  # below ggml's 1e-15 all-zero threshold
        g() * 1e-40,  # subnormal: the fits' inverse scales overflow to inf
        g() * 1e4,  # large: fp16 super-scales near their top
        g() * 1e30,  # huge: x*x overflows in the weighted fits
        g() * np.repeat(2.0 ** rs.randint(-40, 13, 32), 16),  # sub-block scales over 15 decades
        np.where(g() > 0, 1.0, -1.0) * 0.05,  # two values only
    ]
    return np.stack(rows).astype(np.float32)


def _inputs_sha256(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def _ours(x: np.ndarray, t: GGMLType) -> np.ndarray:
    return quantize(torch.from_numpy(x), t).numpy().reshape(-1, BLOCK_SIZES[t][1])


def _gguf_dequantize(raw: np.ndarray, t: GGMLType, shape: tuple[int, ...]) -> torch.Tensor:
    ref = gguf.quants.dequantize(raw.reshape(-1), GGMLQuantizationType(int(t)))
    return torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32)).reshape(shape)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as f:
        data = {k: f[k] for k in f.files}
    assert str(data["inputs_sha256"]) == _inputs_sha256(golden_inputs()), (
        "golden_inputs() no longer draws the values the golden file was made from; "
        "regenerate it as tests/weights/data/README.md describes"
    )
    return data


@pytest.mark.parametrize("t", K_TYPES, ids=lambda t: t.name)
def test_bytes_equal_llamacpp(t: GGMLType, golden: dict[str, np.ndarray]) -> None:
    x = golden_inputs()
    ours, ref = _ours(x, t), golden[t.name]
    assert ours.shape == ref.shape
    bad = np.nonzero((ours != ref).any(axis=1))[0]
    assert bad.size == 0, f"{bad.size} of {len(ref)} blocks differ from llama.cpp, first {bad[:8]}"


@pytest.mark.parametrize("t", K_TYPES, ids=lambda t: t.name)
def test_gguf_decodes_our_bytes_like_we_do(t: GGMLType) -> None:
    x = np.delete(golden_inputs(), 17, axis=0)  # not the 1e30 row: its fp16 scales are inf
    raw = quantize(torch.from_numpy(x), t)
    ours = dequantize(raw, t, x.shape)
    ref = _gguf_dequantize(raw.numpy(), t, x.shape)
    assert torch.equal(ours.view(torch.int32), ref.view(torch.int32))


def test_error_shrinks_with_bits() -> None:
    x = torch.from_numpy((np.random.default_rng(0).standard_normal((64, 1024)) * 0.02).astype(np.float32))
    rms = x.pow(2).mean().sqrt()
    rel = {}
    for t in K_TYPES:
        y = dequantize(quantize(x, t), t, tuple(x.shape))
        rel[t] = float((y - x).pow(2).mean().sqrt() / rms)
    # Measured RMSE / RMS: Q2_K 0.296, Q3_K 0.151, Q4_K 0.071, Q5_K 0.036, Q6_K 0.018 (about
    # 2x per bit; Q4_K and Q5_K beat Q4_0's 0.086 and Q5_0's 0.043).
    bounds = {GGMLType.Q2_K: 0.32, GGMLType.Q3_K: 0.165, GGMLType.Q4_K: 0.078, GGMLType.Q5_K: 0.04, GGMLType.Q6_K: 0.02}
    for t in K_TYPES:
        assert rel[t] < bounds[t], (t.name, rel[t])
    ordered = [rel[t] for t in K_TYPES]
    assert all(a > 1.8 * b for a, b in zip(ordered, ordered[1:])), rel


@pytest.mark.parametrize("t", K_TYPES, ids=lambda t: t.name)
def test_zeros_encode_to_zero_bytes(t: GGMLType) -> None:
    raw = quantize(torch.zeros(3, 512), t)
    assert raw.numel() == 6 * BLOCK_SIZES[t][1] and not raw.any()
    assert not dequantize(raw, t, (3, 512)).any()


@pytest.mark.parametrize("t", K_TYPES, ids=lambda t: t.name)
def test_shape_must_be_whole_blocks(t: GGMLType) -> None:
    assert t in QUANTIZABLE
    with pytest.raises(ValueError, match=f"not a multiple of the {t.name} block size 256"):
        quantize(torch.zeros(2, 384), t)


@pytest.mark.parametrize("t", K_TYPES, ids=lambda t: t.name)
def test_slices_threads_and_chunks_do_not_change_bytes(t: GGMLType, monkeypatch: pytest.MonkeyPatch) -> None:
    x = golden_inputs()[:8].reshape(4, 1024)  # 16 blocks
    whole = _ours(x, t)
    monkeypatch.setattr(kquants, "_SLICE_BLOCKS", 3)  # 6 slices, several per thread
    monkeypatch.setattr(quants, "_CHUNK_WEIGHTS", 5 * 256)  # chunks cut across slices
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the encoder's worker count
    assert np.array_equal(_ours(x, t), whole)
    one_by_one = np.concatenate([_ours(x.reshape(-1, 256)[i : i + 1], t) for i in range(16)])
    assert np.array_equal(one_by_one, whole)


def test_input_dtype_and_layout() -> None:
    x = torch.from_numpy(golden_inputs()[:4]).to(torch.bfloat16)
    t = GGMLType.Q4_K
    want = quantize(x.float(), t)
    assert torch.equal(quantize(x, t), want)
    assert torch.equal(quantize(x.float().t().contiguous().t(), t), want)  # non-contiguous


@pytest.mark.parametrize("shape", [(16, 1), (32, 2), (16, 8), (32, 49), (256, 1)])
def test_seq_sum_is_a_running_sum(shape: tuple[int, int]) -> None:
    # Byte identity rests on numpy adding row after row along axis 0 (pairwise summation is
    # only used along the contiguous axis); check that against an explicit loop.
    p, m = shape
    t = np.random.default_rng(p * m).standard_normal((p, m)).astype(np.float32)
    t *= np.float32(10.0) ** np.random.default_rng(1).integers(-4, 5, t.shape).astype(np.float32)
    want = np.zeros(m, dtype=np.float32)
    for row in t:
        want = want + row
    assert np.array_equal(kquants._seq_sum(t).view(np.int32), want.view(np.int32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input_gives_cuda_bytes() -> None:
    x = torch.from_numpy(golden_inputs()[:4])
    for t in K_TYPES:
        raw = quantize(x.cuda(), t)
        assert raw.device.type == "cuda"
        assert torch.equal(raw.cpu(), quantize(x, t))
