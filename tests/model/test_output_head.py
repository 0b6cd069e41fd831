"""The output head on many rows (model/linear.py `dense_min_rows(head=True)`): where prefill runs
llamita's int8 kernels (AVX2, AVX-VNNI), a head given HEAD_DENSE_MIN_ROWS rows or more (every
position's logits: perplexity, prompt logprobs, echo) runs as a dense float32 matmul of its exact
weights, so its logits are the float64 statement x W^T (W as `gguf` dequantizes the file's Q8_0
bytes) within float32 rounding, not the kernel's int8 rounding of x. Fewer rows (the last row of
a prompt, decode steps), and every layer that is not the head, keep the kernel's bits.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize as gguf_dequantize

from llamita.engine.loader import load_model
from llamita.kernels import int8, native
from llamita.model.linear import DENSE_MIN_ROWS, HEAD_DENSE_MIN_ROWS, Int4Linear, Int8Linear, dense_min_rows
from llamita.weights.quants import GGMLType, quantize

from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

E32 = 2.0**-24  # float32 unit roundoff
SHAPE = (96, 352)  # 6 blocks of 16 rows, 11 groups of 32
KERNEL_PREFILL = ["avx2", "avx_vnni"]  # levels whose prefill runs the kernels (dense_min_rows() is off)


def _at_level(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    if native.level_ops(level) is None:
        pytest.skip(f"kernel level {level} is unavailable here: {native.kernel_level_skipped(level)}")
    monkeypatch.setattr(native, "kernel_level", lambda: level)


def _head(seed: int) -> tuple[Int8Linear, torch.Tensor]:
    """A Q8_0 head in its own blocks, and its weight as `gguf` dequantizes the bytes (float64)."""
    gen = torch.Generator().manual_seed(seed)
    raw = quantize(torch.randn(SHAPE, generator=gen) * 0.05, GGMLType.Q8_0)
    rows = raw.view(SHAPE[0], -1)
    exact = gguf_dequantize(rows.numpy(), gguf.GGMLQuantizationType.Q8_0).astype(np.float64)
    return Int8Linear(int8.q8_0_blocks(*SHAPE, lambda a, b: rows[a:b]), head=True), torch.from_numpy(exact)


def _x(rows: int) -> torch.Tensor:
    x = torch.randn(1, rows, SHAPE[1], generator=torch.Generator().manual_seed(rows))
    x[..., :3] *= 20  # outlier columns, as final hidden states have: int8 per 32 rounds the rest coarsely
    return x


@pytest.mark.parametrize("level", KERNEL_PREFILL)
def test_head_on_many_rows_is_the_float64_statement(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    _at_level(monkeypatch, level)
    head, w = _head(0)
    x = _x(HEAD_DENSE_MIN_ROWS)
    want = x.double() @ w.T
    # float32 sums of K products of exact float32 values: within K * u * sum |x w| each.
    bound = SHAPE[1] * E32 * (x.double().abs() @ w.abs().T)
    got = head(x, out_dtype=torch.float32)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert bool(((got.double() - want).abs() <= bound).all())
    # The kernel (int8 activations) misses that bound: the test tells the two paths apart.
    kernel = int8.int8_linear(x, head.weight_int8, torch.float32)
    assert bool(((kernel.double() - want).abs() > bound).any())


@pytest.mark.parametrize("level", KERNEL_PREFILL)
def test_head_dense_only_where_intended(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    _at_level(monkeypatch, level)
    head, _ = _head(1)
    layer = Int8Linear(head.weight_int8)  # the same weight, not the head
    assert dense_min_rows(head=True) == HEAD_DENSE_MIN_ROWS and dense_min_rows() > 4096
    for rows in (1, 8, HEAD_DENSE_MIN_ROWS - 1):  # decode, a batch, just below: the kernel's bits
        x = _x(rows)
        assert torch.equal(head(x, out_dtype=torch.float32), int8.int8_linear(x, head.weight_int8, torch.float32))
    x = _x(512)  # a prefill window through a layer that is not the head: still the kernel
    assert torch.equal(layer(x, out_dtype=torch.float32), int8.int8_linear(x, head.weight_int8, torch.float32))
    assert not torch.equal(head(x, out_dtype=torch.float32), layer(x, out_dtype=torch.float32))


def test_levels_with_dense_prefill_keep_their_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    # AVX-512 levels (and torch's kernels) expand every layer from DENSE_MIN_ROWS already.
    for level in ("avx512_vnni", None):
        monkeypatch.setattr(native, "kernel_level", lambda level=level: level)
        assert dense_min_rows(head=True) == dense_min_rows() == DENSE_MIN_ROWS


@pytest.mark.parametrize("tied", [True, False])
def test_only_the_output_projection_is_the_head(tmp_path: Path, tied: bool) -> None:
    cfg = tiny_hf_config(tie_word_embeddings=tied)
    path = write_gguf(tmp_path / "q8.gguf", cfg, random_hf_weights(cfg, seed=5), gguf.GGMLQuantizationType.Q8_0)
    model = load_model(path, dtype="float32", compact=True, device="cpu").model
    compact = {name: m for name, m in model.named_modules() if isinstance(m, (Int4Linear, Int8Linear))}
    if "lm_head" not in compact:
        pytest.skip("no compact int8 weights here (no kernel level, no torch int8 kernel)")
    assert [name for name, m in compact.items() if m.head] == ["lm_head"]
    assert len(compact) == 2 * 7 + 1
