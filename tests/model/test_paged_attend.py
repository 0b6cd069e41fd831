"""PagedKVCache.attend (a decode step's attention read in place from the block pools) against
the path it replaces: `update` (write, then gather each row's blocks) and
`single_query_attention` over the copy."""

from __future__ import annotations

import pytest
import torch

from llamita.config import ModelConfig
from llamita.kernels import native
from llamita.model import paged_kv_cache
from llamita.model.paged_kv_cache import PagedKVCache
from llamita.model.transformer import single_query_attention


@pytest.mark.parametrize(
    "dtype, pool_dtype",
    # float16 pools: a float32 model's cache (paged_kv_cache.cache_dtype)
    [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float16)],
)
def test_attend_in_place_equals_gather_then_attend(dtype: torch.dtype, pool_dtype: torch.dtype):
    if native.kernel_level() is None:
        pytest.skip(f"no kernel level loads here: {native.kernel_level_skipped()}")
    cfg = ModelConfig(n_layers=2, dim=64, n_heads=6, n_kv_heads=2, ffn_dim=32, vocab_size=10)
    hd, g = cfg.head_dim, torch.Generator().manual_seed(0)
    caches = [PagedKVCache(cfg, n_blocks=12, block_size=4, dtype=pool_dtype) for _ in range(2)]
    tables = torch.tensor([[5, 1, 7, 0, 9], [2, 6, 3, 4, 11], [8, 10, 0, 0, 0]])  # scattered
    for cache in caches:
        cache.bind(tables)
    history = torch.randn(3, 13, cfg.n_kv_heads, hd, generator=g).to(dtype)
    positions = torch.tensor([[12], [6], [0]])
    for cache in caches:  # earlier positions, as prefill wrote them
        before = torch.arange(13).expand(3, 13)
        cache.update(1, None, before, history, history * 0.5, 13)
    q = torch.randn(3, 1, cfg.n_heads, hd, generator=g).to(dtype)
    k = torch.randn(3, 1, cfg.n_kv_heads, hd, generator=g).to(dtype)
    v = torch.randn(3, 1, cfg.n_kv_heads, hd, generator=g).to(dtype)
    length = 16  # a compiled step attends a rounded-up length, masked per row
    got = caches[0].attend(1, positions, q, k, v, length)
    assert got is not None and got.shape == (3, cfg.n_heads, 1, hd) and got.dtype == dtype
    keys, values = caches[1].update(1, None, positions, k, v, length)
    assert keys.dtype == values.dtype == dtype  # gathered in the model's dtype
    mask = (torch.arange(length) <= positions[:, :, None])[:, None]
    want = single_query_attention(q.transpose(1, 2), keys, values, mask)
    # float32: sums in another order; bf16: at most one rounding step of the result apart.
    rtol = 0.0 if dtype == torch.float32 else 2.0**-7
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=1e-5)
    for a, b in zip(caches[0].k + caches[0].v, caches[1].k + caches[1].v):
        assert torch.equal(a, b)  # the same keys and values written in the same slots


def test_attend_declines_caches_the_operator_does_not_read():
    """float64 (not in IN_PLACE_DTYPES): nothing written, the caller gathers instead."""
    assert torch.float64 not in paged_kv_cache.IN_PLACE_DTYPES
    cfg = ModelConfig(n_layers=1, dim=16, n_heads=2, n_kv_heads=1, ffn_dim=32, vocab_size=10)
    cache = PagedKVCache(cfg, n_blocks=4, block_size=4, dtype=torch.float64)
    cache.bind(torch.tensor([[0, 1]]))
    x = torch.ones(1, 1, 1, cfg.head_dim, dtype=torch.float64)
    q = torch.zeros(1, 1, 2, cfg.head_dim, dtype=torch.float64)
    assert cache.attend(0, torch.tensor([[0]]), q, x, x, 2) is None
    assert torch.equal(cache.k[0], torch.zeros_like(cache.k[0]))


def test_a_float32_model_keeps_a_float16_cache_on_the_cpu():
    """As llama.cpp's default: half the memory and reads of float32; where the operator does
    not load (or on a GPU) the cache stays in the model's dtype."""
    ops = paged_kv_cache.in_place_attention_ops()
    assert paged_kv_cache.cache_dtype(torch.float32, "cpu") == (torch.float16 if ops is not None else torch.float32)
    assert paged_kv_cache.cache_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    assert paged_kv_cache.cache_dtype(torch.float32, "meta") == torch.float32


def test_attend_declines_prefill_chunks():
    cfg = ModelConfig(n_layers=1, dim=16, n_heads=2, n_kv_heads=1, ffn_dim=32, vocab_size=10)
    cache = PagedKVCache(cfg, n_blocks=4, block_size=4, dtype=torch.bfloat16)
    cache.bind(torch.tensor([[0, 1]]))
    x = torch.zeros(1, 2, 1, cfg.head_dim, dtype=torch.bfloat16)
    q = torch.zeros(1, 2, 2, cfg.head_dim, dtype=torch.bfloat16)
    assert cache.attend(0, torch.tensor([[0, 1]]), q, x, x, 2) is None
    assert torch.equal(cache.k[0], torch.zeros_like(cache.k[0]))  # nothing written
