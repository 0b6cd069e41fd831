"""Frozen configuration objects shared by every layer.

`ModelConfig` describes one Llama-architecture network; readers in `llamita.weights` build it
from a file's metadata (GGUF keys, HF config.json, Meta params.json). Nothing here imports the
rest of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 ("llama3") or linear RoPE frequency scaling (LLAMA_SPEC §2.5)."""

    kind: str  # "llama3" or "linear"
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context_length: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a decoder-only Llama transformer."""

    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    head_dim: int = 0  # 0: dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    context_length: int = 4096
    tie_word_embeddings: bool = False
    architecture: str = "llama"
    name: str = ""

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        for field in ("n_layers", "dim", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size",
                      "head_dim", "context_length"):
            if getattr(self, field) <= 0:
                raise ValueError(f"ModelConfig.{field} must be positive, got {getattr(self, field)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if not (math.isfinite(self.norm_eps) and self.norm_eps > 0):
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def n_params(self) -> int:
        """Number of weights, counting a tied embedding once."""
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        ffn = 3 * self.dim * self.ffn_dim
        per_layer = attn + ffn + 2 * self.dim
        embed = self.vocab_size * self.dim * (1 if self.tie_word_embeddings else 2)
        return self.n_layers * per_layer + embed + self.dim
