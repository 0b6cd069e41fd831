"""BlockManager bookkeeping and PagedKVCache indexing, without a model."""

from __future__ import annotations

import torch

from llamita.config import ModelConfig
from llamita.engine.block_manager import BlockManager
from llamita.model.kv_cache import KVCache
from llamita.model.paged_kv_cache import PagedKVCache


def test_shared_prefix_blocks_are_found_and_counted_once():
    bm = BlockManager(n_blocks=8, block_size=4)
    a = list(range(10))
    assert bm.allocate("a", a) == 0 and len(bm.table("a")) == 3
    bm.register("a", a)  # blocks [0..3] and [4..7] are full, [8, 9] is not
    b = a[:8] + [50, 51, 52]
    assert bm.can_allocate(b)
    assert bm.allocate("b", b) == 8
    assert bm.table("b")[:2] == bm.table("a")[:2] and bm.table("b")[2] != bm.table("a")[2]
    assert bm.n_free == 8 - 4
    bm.free("a")
    assert bm.n_free == 5  # the shared blocks are still held by b
    bm.free("b")
    assert bm.n_free == 8 and bm.stats.hit_tokens == 8 and bm.stats.queried_tokens == 21


def test_a_prompt_never_hits_completely():
    """The last prompt token must be computed for its logits: an identical prompt of exactly
    two blocks reuses only the first."""
    bm = BlockManager(n_blocks=8, block_size=4)
    p = list(range(8))
    bm.allocate("a", p)
    bm.register("a", p)
    assert bm.allocate("b", p) == 4


def test_the_prefix_must_match_before_a_block():
    bm = BlockManager(n_blocks=8, block_size=2)
    bm.allocate("a", [1, 2, 3, 4, 5])
    bm.register("a", [1, 2, 3, 4, 5])
    assert bm.allocate("b", [9, 9, 3, 4, 5]) == 0  # block [3, 4] follows another prefix


def test_freed_blocks_keep_their_content_until_reused_oldest_first():
    bm = BlockManager(n_blocks=4, block_size=2)
    bm.allocate("a", [1, 2, 3, 4, 5])
    bm.register("a", [1, 2, 3, 4])
    bm.free("a")
    assert bm.allocate("b", [1, 2, 3, 4, 9]) == 4  # the finished request's blocks are found
    bm.free("b")
    # Taking all four blocks for other tokens evicts everything; nothing stale is found then.
    bm.allocate("c", [7] * 8)
    bm.free("c")
    assert bm.allocate("d", [1, 2, 3, 4, 9]) == 0


def test_grow_refuses_without_changing_anything():
    bm = BlockManager(n_blocks=3, block_size=2)
    bm.allocate("a", [1, 2, 3])
    assert bm.grow("a", 4) and len(bm.table("a")) == 2
    assert not bm.grow("a", 9) and len(bm.table("a")) == 2
    assert bm.grow("a", 6) and bm.n_free == 0


def test_twin_blocks_keep_the_chain():
    """Two requests computing the same prompt at once: the second's blocks are not registered,
    but what follows them is still found through the first's."""
    bm = BlockManager(n_blocks=10, block_size=2)
    p = [1, 2, 3, 4, 5, 6, 7]
    bm.allocate("a", p)
    bm.allocate("b", p)
    bm.register("a", p[:4])
    bm.register("b", p)  # registers b's third block after a's second
    assert bm.allocate("c", p + [8]) == 6


def test_paged_cache_reads_what_the_static_cache_reads():
    cfg = ModelConfig(n_layers=1, dim=16, n_heads=2, n_kv_heads=1, ffn_dim=32, vocab_size=10)
    hd = cfg.head_dim
    g = torch.Generator().manual_seed(0)
    static = KVCache(cfg, 2, 12)
    paged = PagedKVCache(cfg, n_blocks=8, block_size=3)
    tables = torch.tensor([[5, 1, 7, 0], [2, 6, 3, 4]])  # scattered, non-contiguous blocks
    paged.bind(tables)
    # Row 0 writes 7 positions, row 1 writes 10, in two calls of different widths.
    for positions in (torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]), torch.tensor([[5, 6], [8, 9]])):
        k = torch.randn(2, positions.shape[1], 1, hd, generator=g)
        v = torch.randn(2, positions.shape[1], 1, hd, generator=g)
        length = int(positions.max()) + 1
        ks, vs = static.update(0, None, positions, k, v, length)
        kp, vp = paged.update(0, None, positions, k, v, length)
        assert kp.shape == ks.shape == (2, 1, length, hd)
        written = [positions[r].tolist() for r in range(2)]
        for r in range(2):  # compare every position a row has written (others are masked)
            seen = sorted({p for p in sum(written[r : r + 1], []) if p < length})
            torch.testing.assert_close(kp[r, :, seen], ks[r, :, seen], rtol=0, atol=0)
            torch.testing.assert_close(vp[r, :, seen], vs[r, :, seen], rtol=0, atol=0)
