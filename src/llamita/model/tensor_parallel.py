"""Tensor-parallel wrappers: one rank's shard of the Transformer, made to compute the whole.

A rank's Transformer is built as usual from its slice of the weights (`weights/shard.py`):
fewer heads, FFN columns and vocabulary rows. `parallelize` then wraps the layers where ranks
must combine their parts (Megatron, arXiv:1909.08053):

  self_attn.o_proj, mlp.down_proj   input features split: each rank's output is a partial sum,
                                    all-reduced (two all-reduces per block)
  embed_tokens                      vocabulary rows split: a rank looks up the ids it holds,
                                    zeros for the rest, all-reduced (once per forward)
  lm_head (or the tied embedding)   vocabulary rows split: logits all-gathered

The wrappers hold the wrapped module as `inner` and only act on its output, so any module with
the same interface composes: nn.Linear, Int4Linear, Int8Linear, a LoRA wrapper (apply LoRA
before `parallelize`, so the all-reduce sums base and adapter together).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from llamita.model.transformer import Transformer


def _all_reduce(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Sum `x` over the ranks of `group`. Low-precision partial sums are added in float32, as
    a single matmul would accumulate them."""
    if x.dtype in (torch.bfloat16, torch.float16):
        y = x.float()
        dist.all_reduce(y, group=group)
        return y.to(x.dtype)
    dist.all_reduce(x, group=group)
    return x


class RowParallel(nn.Module):
    """A linear layer whose input features are split over ranks: sum the partial outputs."""

    def __init__(self, inner: nn.Module, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.inner = inner
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial: torch.Tensor = self.inner(x)
        return _all_reduce(partial, self.group)


class VocabParallelEmbedding(nn.Module):
    """An embedding holding vocabulary rows [start, start + rows) of the whole table."""

    def __init__(self, inner: nn.Module, start: int, rows: int, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.inner = inner
        self.start, self.rows = start, rows
        self.group = group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.rows)  # (B, S): another rank's ids
        found: torch.Tensor = self.inner(local.clamp(0, self.rows - 1))
        x = found.masked_fill(outside[..., None], 0)
        dist.all_reduce(x, group=self.group)  # exactly one rank adds a non-zero row
        return x


class TiedHead(nn.Module):
    """The output projection of a tied model: the (dense) embedding table, shared."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class VocabParallelHead(nn.Module):
    """An output projection over this rank's vocabulary rows; returns every rank's logits
    side by side, float32 (B, S, vocab)."""

    def __init__(self, inner: nn.Module, vocab_sizes: list[int], group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.inner = inner
        self.vocab_sizes = vocab_sizes  # rows of each rank, in rank order
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.inner(x).float()
        width = max(self.vocab_sizes)  # all_gather needs equal shapes: pad, gather, trim
        padded = F.pad(local, (0, width - local.shape[-1]))
        parts = [torch.empty_like(padded) for _ in self.vocab_sizes]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[..., :n] for p, n in zip(parts, self.vocab_sizes)], dim=-1)


def parallelize(
    model: Transformer, vocab_start: int, vocab_sizes: list[int], group: dist.ProcessGroup | None = None
) -> Transformer:
    """Wrap a rank's shard `model` (a Transformer built from its slice of the weights) in
    place so that its forward returns the whole model's logits. `vocab_start` is the first
    vocabulary row this rank holds, `vocab_sizes` the rows of every rank.

    `model.config` becomes the rank's view: its own heads and FFN columns (what its KV cache
    holds) but the whole vocabulary (what its logits cover).
    """
    for block in model.blocks():
        block.self_attn.o_proj = RowParallel(block.self_attn.o_proj, group)
        block.mlp.down_proj = RowParallel(block.mlp.down_proj, group)
    head = model.lm_head if model.lm_head is not None else TiedHead(model.embedding_table())
    model.lm_head = VocabParallelHead(head, vocab_sizes, group)
    local_rows = model.config.vocab_size
    model.embed_tokens = VocabParallelEmbedding(model.embed_tokens, vocab_start, local_rows, group)
    model.config = replace(model.config, vocab_size=sum(vocab_sizes))
    return model
