"""Rotary position embedding in the rotate-half layout, with Llama 3.1 frequency scaling.

Every checkpoint reader hands Q/K weights to the model in rotate-half (Hugging Face) order, so
this is the only RoPE in llamita (docs/llama-reference.md §2.4, §2.5).
"""

from __future__ import annotations

import math

import torch

from llamita.config import ModelConfig, RopeScaling


def llama3_scale(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1 "llama3" scaling: keep high frequencies, divide low ones by `factor`,
    interpolate smoothly in between (docs/llama-reference.md §2.5)."""
    low_wavelen = s.original_context_length / s.low_freq_factor
    high_wavelen = s.original_context_length / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (s.original_context_length / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_inv_freq(cfg: ModelConfig, freq_divisors: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse frequencies, shape (head_dim/2,), float32.

    `freq_divisors` is GGUF's `rope_freqs` tensor: per-pair divisors that llama.cpp's converter
    writes instead of rope-scaling metadata.
    """
    hd = cfg.head_dim
    # Same arithmetic as transformers (float32 powers) so logits match it bit for bit where possible.
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    if cfg.rope_scaling is not None:
        if cfg.rope_scaling.kind == "llama3":
            inv_freq = llama3_scale(inv_freq, cfg.rope_scaling)
        elif cfg.rope_scaling.kind == "linear":
            inv_freq = inv_freq / cfg.rope_scaling.factor
        else:
            raise ValueError(f"unknown RoPE scaling {cfg.rope_scaling.kind!r}")
    if freq_divisors is not None:
        inv_freq = inv_freq / freq_divisors.to(torch.float32)
    return inv_freq


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for absolute `positions` (B, S) -> each (B, S, head_dim).

    Angles are computed in float32: bf16 positions are a classic long-context bug.
    """
    angles = positions.to(torch.float32)[..., None] * inv_freq.to(positions.device)  # (B, S, hd/2)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + hd/2]). x: (B, S, n_heads, hd); cos/sin: (B, S, hd), their two
    halves equal (`rope_cos_sin`). Returns a new contiguous tensor.

    Each half is one multiply and one `addcmul` (x1·c − x2·s, x2·c + x1·s: the same products
    and sums, in the same order, as x·cos + rotate_half(x)·sin), half-width tables: three
    passes over x's size instead of five (negate, concatenate, two products, a sum).
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, :, None, :half], sin[:, :, None, :half]
    return torch.cat((torch.addcmul(x1 * c, x2, s, value=-1), torch.addcmul(x2 * c, x1, s)), dim=-1)
