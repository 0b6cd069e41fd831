"""A prompt's prefill, piece by piece: RoPE (model/rope.py) against a float64 statement of the
rotation, the first chunk's causal attention (`causal_attention`) against SDPA in float64, and
the first chunk over a cache (no mask) against the masked path, no cache and transformers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llamita.engine.loader import load_model
from llamita.model.attention_inputs import AttentionInputs
from llamita.model.paged_kv_cache import PagedKVCache
from llamita.model.rope import apply_rope, rope_cos_sin
from llamita.model.transformer import CAUSAL_BLOCK, causal_attention

from tiny_models import hf_llama, random_hf_weights, tiny_hf_config, write_gguf


def _rotated(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x (B, S, n, hd) with each pair (i, i + hd/2) turned by position * inv_freq[i], in float64
    (docs/llama-reference.md §2.4, rotate-half order)."""
    out = torch.empty(x.shape, dtype=torch.float64)
    half = x.shape[-1] // 2
    for b in range(x.shape[0]):
        for s in range(x.shape[1]):
            for i in range(half):
                theta = float(positions[b, s]) * float(inv_freq[i])
                c, si = math.cos(theta), math.sin(theta)
                a, z = x[b, s, :, i].double(), x[b, s, :, i + half].double()
                out[b, s, :, i] = a * c - z * si
                out[b, s, :, i + half] = z * c + a * si
    return out


@pytest.mark.parametrize("contiguous", [True, False])
def test_apply_rope_matches_float64_rotation(contiguous: bool) -> None:
    g = torch.Generator().manual_seed(0)
    bsz, seqlen, n, hd = 2, 5, 3, 16
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 100, 4000]])
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    cos, sin = rope_cos_sin(positions, inv_freq, torch.float32)
    if contiguous:
        x = torch.randn(bsz, seqlen, n, hd, generator=g)
    else:  # heads picked out of wider rows, as the joined q/k/v projection hands them over
        x = torch.randn(bsz, seqlen, n + 2, hd, generator=g)[:, :, 1 : n + 1]
    got = apply_rope(x, cos, sin)
    assert got.shape == x.shape and got.is_contiguous()
    want = _rotated(x, positions, inv_freq)
    # float32 angles (rope_cos_sin) at position 4000: ~4000 * 2^-24 rad of error in theta.
    assert (got.double() - want).abs().max() < 2e-3 * want.abs().max()
    near = positions < 10
    assert (got.double() - want)[near].abs().max() < 1e-6 * want.abs().max()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    cfg = tiny_hf_config()
    path = write_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", cfg, random_hf_weights(cfg, seed=5))
    return load_model(path, dtype="float32", device="cpu")


def test_only_a_first_chunk_over_a_cache_drops_the_mask(tiny) -> None:
    cache = PagedKVCache(tiny.config, 8, 16)
    inv_freq = tiny.model.inv_freq

    def mask(positions: torch.Tensor, key_length: int | None = None) -> torch.Tensor | None:
        return AttentionInputs.build(positions, inv_freq, torch.float32, cache, key_length=key_length).mask

    assert mask(torch.arange(6).expand(2, 6)) is None  # every row at 0..S-1: causal over S keys
    assert mask(torch.tensor([[0]])) is None
    later = mask(torch.arange(3, 9)[None])  # a later chunk sees the earlier keys too
    assert later is not None and later.shape == (1, 1, 6, 9) and bool(later[0, 0, 0, :4].all())
    assert mask(torch.stack([torch.arange(6), torch.arange(1, 7)])) is not None
    assert mask(torch.arange(6)[None], key_length=32) is not None  # a compiled step's fixed length
    assert AttentionInputs.build(torch.arange(6)[None], inv_freq, torch.float32).mask is None  # no cache


@pytest.mark.parametrize("seqlen,n_heads,n_kv", [(300, 9, 3), (CAUSAL_BLOCK, 4, 4), (200, 8, 1), (5, 2, 1)])
def test_causal_attention_matches_float64_sdpa(seqlen: int, n_heads: int, n_kv: int) -> None:
    g = torch.Generator().manual_seed(seqlen + n_heads)
    bsz, hd = 2, 64
    q = torch.randn(bsz, seqlen, n_heads, hd, generator=g)
    # Keys and values as the paged cache hands them out: transposed views of token-major blocks.
    keys = (3 * torch.randn(bsz, seqlen, n_kv, hd, generator=g)).transpose(1, 2)
    values = torch.randn(bsz, seqlen, n_kv, hd, generator=g).transpose(1, 2)
    got = causal_attention(q, keys, values)
    assert got.shape == (bsz, n_heads, seqlen, hd) and got.dtype == torch.float32
    group = n_heads // n_kv
    k64, v64 = (t.double().repeat_interleave(group, dim=1) for t in (keys, values))
    want = F.scaled_dot_product_attention(q.transpose(1, 2).double(), k64, v64, is_causal=True)
    assert (got.double() - want).abs().max() < 1e-5 * want.abs().max()
    # The first query sees only the first key: its output is that key's value, per KV head.
    assert torch.allclose(got[:, :, 0], values[:, :, 0].repeat_interleave(group, dim=1), atol=1e-6)


def test_first_chunk_causal_path_equals_masked_path_and_no_cache(tiny) -> None:
    """The first chunk over a paged cache (causal attention, no mask) against the same chunk
    with the mask spelled out (`key_length` = S: SDPA with the mask) and against no cache; then
    a second chunk over what the first one wrote, against the whole prompt at once; and the
    whole prompt against transformers. The first chunk is longer than CAUSAL_BLOCK."""
    model, cfg = tiny.model, tiny.config
    n, first_len = 200, CAUSAL_BLOCK + 22
    tokens = torch.randint(0, cfg.vocab_size, (2, n), generator=torch.Generator().manual_seed(3))
    first = torch.arange(first_len).expand(2, first_len)
    tables = torch.arange(26).view(2, 13)  # 13 blocks of 16 a row
    with torch.inference_mode():
        whole = model(tokens)
        caches = [PagedKVCache(cfg, 26, 16) for _ in range(2)]
        for c in caches:
            c.bind(tables)
        causal = model(tokens[:, :first_len], first, caches[0])
        masked = model(tokens[:, :first_len], first, caches[1], key_length=first_len)
        second = model(tokens[:, first_len:], torch.arange(first_len, n).expand(2, n - first_len), caches[0])
        want = hf_llama(tiny_hf_config(), random_hf_weights(tiny_hf_config(), seed=5))(tokens).logits
    scale = whole.abs().max()
    assert (causal - masked).abs().max() < 1e-5 * scale
    assert (causal - whole[:, :first_len]).abs().max() < 1e-5 * scale
    assert (second - whole[:, first_len:]).abs().max() < 1e-5 * scale
    assert (whole - want).abs().max() < 1e-5 * want.abs().max()
