"""The decode step's attention (`single_query_attention`) against torch's SDPA in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llamita.model.transformer import single_query_attention


def _reference(q, keys, values, mask):  # noqa: ANN001, ANN202
    group = q.shape[1] // keys.shape[1]
    k, v = (t.double().repeat_interleave(group, dim=1) for t in (keys, values))
    return F.scaled_dot_product_attention(q.double(), k, v, attn_mask=mask)


@pytest.mark.parametrize("n_heads,n_kv", [(9, 3), (4, 4), (8, 1)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_matches_sdpa(n_heads: int, n_kv: int, dtype: torch.dtype, tol: float) -> None:
    g = torch.Generator().manual_seed(n_heads * 10 + n_kv)
    bsz, length, hd = 5, 37, 64
    q = torch.randn(bsz, n_heads, 1, hd, generator=g).to(dtype)
    # Keys as the paged cache returns them: a transposed view of token-major storage.
    keys = (3 * torch.randn(bsz, length, n_kv, hd, generator=g)).to(dtype).transpose(1, 2)
    values = torch.randn(bsz, length, n_kv, hd, generator=g).to(dtype).transpose(1, 2)
    positions = torch.tensor([0, 5, 17, 36, 36])  # each row sees keys 0..its position
    mask = (torch.arange(length) <= positions[:, None, None])[:, None]  # (B, 1, 1, L)
    out = single_query_attention(q, keys, values, mask)
    assert out.shape == q.shape and out.dtype == dtype
    expected = _reference(q, keys, values, mask)
    assert (out.double() - expected).abs().max() <= tol * expected.abs().max()
    # Row 0 sees only key 0: its output is exactly that key's value (per KV head).
    assert torch.allclose(
        out[0, :, 0].double(), values[0, :, 0].double().repeat_interleave(n_heads // n_kv, 0), atol=tol
    )
    # No mask: every key.
    unmasked = single_query_attention(q, keys, values, None)
    expected = _reference(q, keys, values, None)
    assert (unmasked.double() - expected).abs().max() <= tol * expected.abs().max()
