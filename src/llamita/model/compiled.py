"""The decode step under torch.compile: one token per cache row, a static KV cache, fixed shapes.

Eager decode of a small model spends much of its time between ops (Python, the dispatcher); a
compiled step runs RMSNorm, RoPE, SwiGLU and the residual adds as a few fused C++ loops
(Inductor) around the int4/int8 matmul and attention calls, which stay the aten kernels eager
uses (they have fake-tensor implementations, so Dynamo sees them as opaque ops).

The step is `Transformer.forward(..., whole_cache=True)`: attention reads all `max_len`
positions of the cache through a mask computed from the positions, so every shape depends on
the batch size and the cache length only and one graph serves every position. KV caches are
sized in `cache_length` buckets so generations of different lengths share a graph.

Compiled code is cached on disk by Inductor's FX-graph and AOTAutograd caches, under
`cache_dir()` unless TORCHINDUCTOR_CACHE_DIR is set: the first compile of a (model, batch,
bucket) takes minutes on 2 cores, later processes reuse it (Dynamo still re-traces the Python,
seconds). docs/performance.md has the figures and why compiling is opt-in.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from llamita.model.kv_cache import KVCache
from llamita.model.offload import OnDevice
from llamita.model.tensor_parallel import RowParallel, TiedHead, VocabParallelEmbedding, VocabParallelHead

# Smallest KV cache a compiled generation gets: short generations all share this one graph.
MIN_CACHE_LENGTH = 256
_UNCOMPILABLE = (RowParallel, VocabParallelEmbedding, VocabParallelHead, TiedHead, OnDevice)


def cache_dir() -> Path:
    """Where llamita keeps Inductor's compiled artifacts: $XDG_CACHE_HOME/llamita/inductor."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llamita" / "inductor"


def cache_length(needed: int, context_length: int) -> int:
    """KV cache positions for a generation needing `needed`: the next power of two from
    MIN_CACHE_LENGTH on, at most the context length (but never less than `needed`)."""
    length = MIN_CACHE_LENGTH
    while length < needed:
        length *= 2
    return max(needed, min(length, context_length))


def compile_blocker(model: nn.Module) -> str | None:
    """Why `model`'s decode step is not compiled (it then runs eager), or None if it can be.

    Tensor-parallel layers (collectives) and layers split across devices are left eager;
    LoRA adapters are decided per step (`CompiledDecoder` is only called without them).
    """
    for module in model.modules():
        if isinstance(module, _UNCOMPILABLE):
            kind = "layers split across devices" if isinstance(module, OnDevice) else "tensor parallelism"
            return f"{kind} ({type(module).__name__})"
    return None


class CompiledDecoder:
    """`step(tokens, positions, cache)`: logits (B, vocab) float32 of one token per cache row.

    tokens, positions: (B, 1) int64 with B == cache.n_rows (every row steps). The first call for
    a new (B, cache length) compiles; `mode` is torch.compile's (None: Inductor's default). Steps
    run in inference mode; make the tensors and the cache there too (Generator does): a tensor
    made outside it is guarded as a different kind and would compile a second graph.
    """

    def __init__(self, model: nn.Module, mode: str | None = None) -> None:
        blocker = compile_blocker(model)
        if blocker is not None:
            raise ValueError(f"the decode step cannot be compiled with {blocker}")
        self.model = model
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir()))
        # dynamic=False: each (B, cache length) is its own static graph, so nothing about the
        # positions can become a symbol and trigger a recompile. Fused loops keep float32
        # intermediates unless told to round where eager rounds to bfloat16; without it greedy
        # tokens drifted from eager's after ~13 tokens on the default model.
        self._step = torch.compile(self._decode, fullgraph=True, dynamic=False, mode=mode,
                                   options={"emulate_precision_casts": True})

    def _decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return self.model(tokens, positions, cache, None, last_only=True, whole_cache=True)[:, -1]

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        if tokens.shape != (cache.n_rows, 1) or positions.shape != tokens.shape:
            raise ValueError(f"a compiled step takes (rows, 1) tokens and positions for all "
                             f"{cache.n_rows} cache rows, got {tuple(tokens.shape)}")
        with torch.inference_mode():
            return self._step(tokens, positions, cache)
