"""Which slice of each weight one tensor-parallel rank holds, and cutting it out of a file.

Megatron-style tensor parallelism (Shoeybi et al. 2019, arXiv:1909.08053) over `world_size`
ranks. Rank r holds a contiguous range of KV heads and the query heads that read them (GQA
groups never straddle ranks), a range of FFN columns, and a range of vocabulary rows:

  q/k/v_proj, gate/up_proj   column-parallel: output rows split (dim 0)
  o_proj, down_proj          row-parallel: input columns split (dim 1); partial outputs summed
  embed_tokens, lm_head      vocabulary rows split (dim 0); lookups summed, logits gathered
  norms, rope_freqs          replicated

Counts that do not divide are split as evenly as they can be (the first ranks get one more),
so the 9-head, 3-KV-head default model runs on 2 ranks (6 + 3 query heads). The one hard limit
is world_size <= n_kv_heads: a KV head is never split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from llamita.config import ModelConfig
from llamita.errors import InvalidParameterError
from llamita.weights.quants import BLOCK_SIZES, GGMLType, dequantize

_COLUMN_PARALLEL = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
)
_ROW_PARALLEL = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def split_range(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank's part when n items are split over world_size ranks as evenly as
    possible, the first n % world_size ranks taking one more."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class ShardAlignmentError(ValueError):
    """A quantized weight's column range does not fall on its block boundaries."""


@dataclass(frozen=True)
class TensorShard:
    """Rank `rank` of `world_size` over the model `config` (the whole model's)."""

    rank: int
    world_size: int
    config: ModelConfig

    def __post_init__(self) -> None:
        cfg, k = self.config, self.world_size
        if not 0 <= self.rank < k:
            raise InvalidParameterError("tensor_parallel", f"rank {self.rank} is not in 0..{k - 1}")
        if k > cfg.n_kv_heads:
            divides = [d for d in range(1, cfg.n_kv_heads + 1) if cfg.n_kv_heads % d == 0]
            raise InvalidParameterError(
                "tensor_parallel",
                f"{k} ranks but the model has only {cfg.n_kv_heads} KV heads (a KV head is never "
                f"split): use at most {cfg.n_kv_heads} ranks; {', '.join(map(str, divides))} "
                "split the heads evenly",
            )

    @property
    def kv_heads(self) -> tuple[int, int]:
        return split_range(self.config.n_kv_heads, self.world_size, self.rank)

    @property
    def heads(self) -> tuple[int, int]:
        """Query heads: all those of this rank's KV heads (they are grouped n_rep at a time)."""
        a, b = self.kv_heads
        return a * self.config.n_rep, b * self.config.n_rep

    @property
    def ffn(self) -> tuple[int, int]:
        return split_range(self.config.ffn_dim, self.world_size, self.rank)

    @property
    def vocab(self) -> tuple[int, int]:
        return split_range(self.config.vocab_size, self.world_size, self.rank)

    def vocab_sizes(self) -> list[int]:
        """Vocabulary rows of every rank, in rank order (what the logits gather needs)."""
        return [
            b - a for a, b in (split_range(self.config.vocab_size, self.world_size, r) for r in range(self.world_size))
        ]

    def local_config(self) -> ModelConfig:
        """The shapes this rank's modules have: its heads, FFN columns and vocabulary rows."""
        cfg = self.config
        (h0, h1), (k0, k1), (f0, f1), (v0, v1) = self.heads, self.kv_heads, self.ffn, self.vocab
        return replace(cfg, n_heads=h1 - h0, n_kv_heads=k1 - k0, ffn_dim=f1 - f0, vocab_size=v1 - v0)

    def split(self, name: str) -> tuple[int, int, int] | None:
        """(dim, start, stop) of canonical weight `name` this rank holds; None: all of it."""
        hd = self.config.head_dim
        if name in ("embed_tokens.weight", "lm_head.weight"):
            return (0, *self.vocab)
        kind = name.split(".", 2)[-1] if name.startswith("layers.") else ""
        if kind in _COLUMN_PARALLEL or kind in _ROW_PARALLEL:
            dim = 0 if kind in _COLUMN_PARALLEL else 1
            if "mlp." in kind:
                return (dim, *self.ffn)
            a, b = self.kv_heads if kind in ("self_attn.k_proj.weight", "self_attn.v_proj.weight") else self.heads
            return dim, a * hd, b * hd
        return None

    def narrow(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """This rank's part of full tensor `t` (a view of it)."""
        split = self.split(name)
        return t if split is None else t.narrow(split[0], split[1], split[2] - split[1])


def slice_gguf(
    raw: np.ndarray, ggml_type: int, shape: tuple[int, ...], split: tuple[int, int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """Cut rows or columns [start, stop) out of a 2-D GGUF tensor's bytes, never decoding it.

    Rows are whole blocks, so any row range is a zero-copy view of the mapped file. A column
    range must start and stop on the type's block boundaries (32 weights for Q4_0/Q8_0, 256
    for the K-quants), else ShardAlignmentError.
    """
    dim, start, stop = split
    n, k = shape
    rows = raw.reshape(n, -1)
    if dim == 0:
        return rows[start:stop].reshape(-1), (stop - start, k)
    block, nbytes = BLOCK_SIZES[GGMLType(ggml_type)]
    if start % block or stop % block:
        raise ShardAlignmentError(
            f"columns {start}:{stop} of a {GGMLType(ggml_type).name} tensor {shape} do not fall on "
            f"its {block}-weight blocks"
        )
    part = rows[:, start // block * nbytes : stop // block * nbytes]
    return np.ascontiguousarray(part).reshape(-1), (n, stop - start)


def dequantize_columns(
    raw: torch.Tensor,
    ggml_type: int,
    shape: tuple[int, ...],
    start: int,
    stop: int,
    dtype: torch.dtype,
    chunk_rows: int = 256,
) -> torch.Tensor:
    """Columns [start, stop) of a quantized 2-D tensor, decoded a few rows at a time (the
    fallback when the range cuts through blocks): (n, stop - start) in `dtype`."""
    n, k = shape
    rows = raw.view(n, -1)
    out = torch.empty((n, stop - start), dtype=dtype)
    for r0 in range(0, n, chunk_rows):
        r1 = min(n, r0 + chunk_rows)
        out[r0:r1] = dequantize(rows[r0:r1].reshape(-1), ggml_type, (r1 - r0, k), dtype)[:, start:stop]
    return out
