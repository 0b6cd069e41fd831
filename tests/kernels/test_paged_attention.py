"""llamita's paged_decode_attention (kernels/csrc/attention.cpp) at every SIMD level this CPU
has, against the statement in float64: each row's query attends to its positions 0..its own,
read from scattered blocks of the pools; and bad tables are refused, never read."""

from __future__ import annotations

import math

import pytest
import torch

from llamita.kernels import native

LEVELS = [lv.name for lv in native.KERNEL_LEVELS]


def _ops(level: str):
    ops = native.level_ops(level)
    if ops is None:
        pytest.skip(f"kernel level {level} is unavailable here: {native.kernel_level_skipped(level)}")
    return ops


def _reference(q, k_pool, v_pool, tables, positions) -> torch.Tensor:  # noqa: ANN001
    """softmax(q k^T / sqrt(hd)) v per row and head in float64, keys gathered by hand."""
    b_rows, n_heads, hd = q.shape
    bs, n_kv = k_pool.shape[1], k_pool.shape[2]
    group = n_heads // n_kv
    out = torch.empty(b_rows, n_heads, hd, dtype=torch.float64)
    for b in range(b_rows):
        length = int(positions[b]) + 1
        slots = [(int(tables[b, p // bs]), p % bs) for p in range(length)]
        keys = torch.stack([k_pool[blk, s] for blk, s in slots]).double()  # (L, n_kv, hd)
        values = torch.stack([v_pool[blk, s] for blk, s in slots]).double()
        for h in range(n_heads):
            kv = h // group
            scores = keys[:, kv] @ q[b, h].double() / math.sqrt(hd)
            out[b, h] = torch.softmax(scores, dim=0) @ values[:, kv]
    return out


def _case(b_rows: int, n_heads: int, n_kv: int, hd: int, bs: int, dtype: torch.dtype, seed: int):  # noqa: ANN202
    gen = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, 3 * bs + 2, (b_rows,), generator=gen)
    positions[0] = 0  # one key: softmax of a single score
    width = int(positions.max()) // bs + 2  # a spare column, never read
    n_blocks = b_rows * width + 3
    tables = torch.randperm(n_blocks, generator=gen)[: b_rows * width].view(b_rows, width)  # scattered
    k_pool = (torch.randn(n_blocks, bs, n_kv, hd, generator=gen) * 2).to(dtype)
    v_pool = torch.randn(n_blocks, bs, n_kv, hd, generator=gen).to(dtype)
    q = torch.randn(b_rows, n_heads, hd, generator=gen) * 2
    return q, k_pool, v_pool, tables, positions


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "b_rows, n_heads, n_kv, hd, bs",
    # runs of heads per KV head: 3; 4 + 1 (10 / 2); 4 at head_dim 128; any head_dim (24, 8)
    [(1, 9, 3, 64, 16), (8, 9, 3, 64, 16), (2, 10, 2, 64, 16), (2, 8, 2, 128, 8), (3, 4, 4, 24, 5), (13, 8, 1, 8, 1)],
)
def test_matches_float64(level: str, dtype: torch.dtype, b_rows: int, n_heads: int, n_kv: int, hd: int, bs: int):
    ops = _ops(level)
    q, k_pool, v_pool, tables, positions = _case(b_rows, n_heads, n_kv, hd, bs, dtype, seed=b_rows * 7 + hd)
    got = ops.paged_decode_attention(q, k_pool, v_pool, tables, positions, hd**-0.5)
    want = _reference(q, k_pool, v_pool, tables, positions)
    assert got.dtype == torch.float32 and got.shape == (b_rows, n_heads, hd)
    # Float32 sums of at most ~50 terms of |values| <= ~5: a few ulps of 1 each, far under 1e-5.
    assert torch.allclose(got.double(), want, rtol=0, atol=2e-5), (got.double() - want).abs().max()


@pytest.mark.parametrize("level", LEVELS)
def test_rows_are_independent_and_threads_agree(level: str):
    """A row's result does not depend on the other rows nor on the thread split (bit-equal)."""
    ops = _ops(level)
    q, k_pool, v_pool, tables, positions = _case(8, 9, 3, 64, 16, torch.bfloat16, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = torch.cat(
            [
                ops.paged_decode_attention(q[i : i + 1], k_pool, v_pool, tables[i : i + 1], positions[i : i + 1], 0.125)
                for i in range(8)
            ]
        )
        torch.set_num_threads(2)
        together = ops.paged_decode_attention(q, k_pool, v_pool, tables, positions, 0.125)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, together)


def _long_case(b_rows: int, n_heads: int, n_kv: int, hd: int, bs: int, dtype: torch.dtype, lengths: list[int]):  # noqa: ANN202
    gen = torch.Generator().manual_seed(sum(lengths) + hd)
    positions = torch.tensor(lengths) - 1
    width = max(lengths) // bs + 1
    n_blocks = b_rows * width + 1
    tables = torch.randperm(n_blocks, generator=gen)[: b_rows * width].view(b_rows, width)
    k_pool = (torch.randn(n_blocks, bs, n_kv, hd, generator=gen) * 0.5).to(dtype)
    v_pool = torch.randn(n_blocks, bs, n_kv, hd, generator=gen).to(dtype)
    q = torch.randn(b_rows, n_heads, hd, generator=gen)
    return q, k_pool, v_pool, tables, positions


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n_heads, n_kv, hd", [(9, 3, 64), (8, 2, 128)])
def test_long_rows_in_chunks_match_float64(level: str, dtype: torch.dtype, n_heads: int, n_kv: int, hd: int):
    """Rows past 4 chunks of positions (attention.cpp kChunk, 512): one row is split by chunks
    across the threads (attend_phased); a tail of 1-3 keys past the runs of 4."""
    ops = _ops(level)
    q, k_pool, v_pool, tables, positions = _long_case(1, n_heads, n_kv, hd, 16, dtype, [2301])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = ops.paged_decode_attention(q, k_pool, v_pool, tables, positions, hd**-0.5)
    finally:
        torch.set_num_threads(threads)
    want = _reference(q, k_pool, v_pool, tables, positions)
    assert torch.allclose(got.double(), want, rtol=0, atol=2e-5), (got.double() - want).abs().max()


@pytest.mark.parametrize("level", LEVELS)
def test_a_long_row_alone_equals_itself_in_a_batch(level: str):
    """Alone, a long row is split by chunks over the threads; in a batch of 16 rows it is one
    item of the (row, KV head) split: the same bits, as a row's result depends on its length
    only (chunks' value sums added in order on both paths)."""
    ops = _ops(level)
    lengths = [2301, 40, 700, 513, 512, 90, 2049, 64, 33, 1200, 5, 600, 2048, 1025, 77, 3000]
    q, k_pool, v_pool, tables, positions = _long_case(16, 8, 2, 64, 16, torch.float16, lengths)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        together = ops.paged_decode_attention(q, k_pool, v_pool, tables, positions, 0.125)
        alone = torch.cat(
            [
                ops.paged_decode_attention(q[i : i + 1], k_pool, v_pool, tables[i : i + 1], positions[i : i + 1], 0.125)
                for i in range(16)
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, together)


@pytest.mark.parametrize("level", LEVELS)
def test_bad_tables_are_refused(level: str):
    ops = _ops(level)
    q, k_pool, v_pool, tables, positions = _case(2, 9, 3, 64, 16, torch.float32, seed=5)
    bad = tables.clone()
    bad[1, int(positions[1]) // 16] = k_pool.shape[0]  # a block past the pool
    with pytest.raises(RuntimeError, match="names block"):
        ops.paged_decode_attention(q, k_pool, v_pool, bad, positions, 0.125)
    far = positions.clone()
    far[0] = tables.shape[1] * 16  # past the row's table
    with pytest.raises(RuntimeError, match="outside its"):
        ops.paged_decode_attention(q, k_pool, v_pool, tables, far, 0.125)
    with pytest.raises(RuntimeError, match="does not fit"):
        ops.paged_decode_attention(q[:, :, :32].contiguous(), k_pool, v_pool, tables, positions, 0.125)
