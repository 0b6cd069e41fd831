"""Tensor parallelism over torch.distributed: every rank holds a shard, rank 0 drives.

Launch with torchrun (`torchrun --nproc-per-node K -m llamita run ... --tensor-parallel K`).
Each rank loads only its slice of the weights (`weights/shard.py`) into a Transformer whose
layers all-reduce and all-gather with the others (`model/tensor_parallel.py`). Rank 0 runs the
ordinary Generator or LLMEngine over a `LeaderModel`; before each forward pass that model
broadcasts the call's inputs (tokens, positions, cache rows or block tables, which cache) and
every other rank runs the same forward pass on its shard (`follow`). Only rank 0 samples,
prints and serves HTTP. At the end rank 0 broadcasts a stop message and the others return.

Backends: gloo on CPU, NCCL on CUDA (one GPU per rank, cuda:LOCAL_RANK).
"""

from __future__ import annotations

import itertools
import os
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from llamita.engine.loader import LoadedModel, load_model, resolve_device
from llamita.engine.lora import LoraSpec, attach_loras
from llamita.errors import InvalidParameterError
from llamita.model.kv_cache import KVCache
from llamita.model.paged_kv_cache import PagedKVCache
from llamita.model.transformer import Transformer
from llamita.weights.shard import TensorShard

# Message header, int64: what rank 0 is about to run. Then one int64 payload tensor with the
# tokens, positions, cache rows, block tables, LoRA slots per row and freed cache ids, in order.
_STOP, _FORWARD, _HIDDEN = 0, 1, 2
_NO_CACHE, _STATIC, _PAGED = 0, 1, 2
_HEADER = 14  # op, B, S, last_only, kind, cache id, geometry a, b, dtype, n rows, tables (r, c),
# n adapter slots, n freed
_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def torchrun_rank(size: int) -> tuple[int, int]:
    """(rank, local rank) of this process in a torchrun launch of `size` processes."""
    world = os.environ.get("WORLD_SIZE")
    if world is None or "RANK" not in os.environ:
        raise InvalidParameterError(
            "tensor_parallel", f"--tensor-parallel {size} needs one process per rank: launch with "
            f"`torchrun --nproc-per-node {size} -m llamita ...`")
    if int(world) != size:
        raise InvalidParameterError(
            "tensor_parallel", f"--tensor-parallel {size} but torchrun started {world} processes")
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


class LeaderModel:
    """Rank 0's model: announces each call to the other ranks, then runs its own shard.

    Stands in for the Transformer wherever the engine uses one (`__call__`, `hidden_states`,
    `config`, `dtype`, `device`); views that reach into the layers are not supported.
    """

    def __init__(self, model: Transformer, group: dist.ProcessGroup | None = None) -> None:
        self.model = model
        self.group = group
        self._cache_ids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._next_id = itertools.count(1)
        self._freed: list[int] = []  # caches rank 0 dropped: the followers drop theirs too
        self._closed = False

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def lora(self) -> Any:
        """The shard's adapter slots (model/lora.py); every rank holds the same slots, each
        with its part of the adapters (`open_model(lora=...)`)."""
        return self.model.lora

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                 cache: KVCache | PagedKVCache | None = None, rows: torch.Tensor | None = None,
                 last_only: bool = False, adapters: torch.Tensor | None = None) -> torch.Tensor:
        positions = self._announce(_FORWARD, tokens, positions, cache, rows, last_only, adapters)
        return self.model(tokens, positions, cache, rows, last_only=last_only, **_lora(adapters))

    forward = __call__

    def hidden_states(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                      cache: KVCache | PagedKVCache | None = None, rows: torch.Tensor | None = None,
                      last_only: bool = False, adapters: torch.Tensor | None = None) -> torch.Tensor:
        positions = self._announce(_HIDDEN, tokens, positions, cache, rows, last_only, adapters)
        return self.model.hidden_states(tokens, positions, cache, rows, last_only=last_only,
                                        **_lora(adapters))

    def _cache_id(self, cache: object) -> int:
        if cache not in self._cache_ids:
            n = self._cache_ids[cache] = next(self._next_id)
            weakref.finalize(cache, self._freed.append, n)
        return self._cache_ids[cache]

    def _announce(self, op: int, tokens: torch.Tensor, positions: torch.Tensor | None,
                  cache: KVCache | PagedKVCache | None, rows: torch.Tensor | None,
                  last_only: bool, adapters: torch.Tensor | None) -> torch.Tensor:
        if self._closed:
            raise RuntimeError("the tensor-parallel group has been shut down")
        bsz, seqlen = tokens.shape
        if positions is None:
            positions = torch.arange(seqlen, device=tokens.device).expand(bsz, seqlen)
        kind, cid, a, b, dt, tables = _NO_CACHE, 0, 0, 0, 0, None
        if isinstance(cache, PagedKVCache):
            kind, a, b, tables = _PAGED, cache.n_blocks, cache.block_size, cache.tables
        elif isinstance(cache, KVCache):
            kind, a, b = _STATIC, cache.n_rows, cache.max_len
        if cache is not None:
            cid, dt = self._cache_id(cache), _DTYPES.index(cache.k[0].dtype)
        freed, self._freed[:] = list(self._freed), []
        t_rows, t_cols = tables.shape if tables is not None else (0, 0)
        header = [op, bsz, seqlen, int(last_only), kind, cid, a, b, dt,
                  -1 if rows is None else rows.numel(), t_rows, t_cols,
                  -1 if adapters is None else adapters.numel(), len(freed)]
        parts = [tokens.reshape(-1), positions.reshape(-1)]
        parts += [] if rows is None else [rows.reshape(-1)]
        parts += [] if tables is None else [tables.reshape(-1)]
        parts += [] if adapters is None else [adapters.reshape(-1)]
        parts.append(torch.tensor(freed, dtype=torch.int64))
        payload = torch.cat([p.to(torch.int64).to(self.device) for p in parts])
        dist.broadcast(torch.tensor(header, dtype=torch.int64, device=self.device), 0, group=self.group)
        dist.broadcast(payload, 0, group=self.group)
        return positions

    def shutdown(self) -> None:
        """Tell the other ranks to stop following (idempotent)."""
        if not self._closed:
            self._closed = True
            dist.broadcast(torch.tensor([_STOP] + [0] * (_HEADER - 1), dtype=torch.int64,
                                        device=self.device), 0, group=self.group)


def _lora(adapters: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The LoRA-slot keyword for a forward call, only when rows use adapters."""
    return {} if adapters is None else {"adapters": adapters}


def follow(model: Transformer, group: dist.ProcessGroup | None = None) -> int:
    """Run rank 0's forward passes on this rank's shard until it says stop; returns how many
    passes were run. Caches are created, bound and dropped as rank 0's are."""
    caches: dict[int, KVCache | PagedKVCache] = {}
    device, steps = model.device, 0
    with torch.inference_mode():
        while True:
            header = torch.empty(_HEADER, dtype=torch.int64, device=device)
            dist.broadcast(header, 0, group=group)
            (op, bsz, seqlen, last_only, kind, cid, a, b, dt, n_rows, t_rows, t_cols, n_adapters,
             n_freed) = header.tolist()
            if op == _STOP:
                return steps
            n_tok = bsz * seqlen
            sizes = [n_tok, n_tok, max(n_rows, 0), t_rows * t_cols, max(n_adapters, 0), n_freed]
            payload = torch.empty(sum(sizes), dtype=torch.int64, device=device)
            dist.broadcast(payload, 0, group=group)
            tokens, positions, rows, tables, adapters, freed = payload.split(sizes)
            tables = tables.view(t_rows, t_cols)
            for gone in freed.tolist():
                caches.pop(gone, None)
            cache = None
            if kind != _NO_CACHE:
                if cid not in caches:
                    make = KVCache if kind == _STATIC else PagedKVCache
                    caches[cid] = make(model.config, a, b, dtype=_DTYPES[dt], device=device)
                cache = caches[cid]
                if isinstance(cache, PagedKVCache):
                    cache.bind(tables)
            args = (tokens.view(bsz, seqlen), positions.view(bsz, seqlen), cache,
                    rows if n_rows >= 0 else None)
            kw = _lora(adapters if n_adapters >= 0 else None)
            if op == _FORWARD:
                model(*args, last_only=bool(last_only), **kw)
            else:
                model.hidden_states(*args, last_only=bool(last_only), **kw)
            steps += 1


@contextmanager
def open_model(path: str | os.PathLike[str] | None = None, *, tensor_parallel: int = 1,
               dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = "auto",
               lora: Sequence[str | os.PathLike[str] | LoraSpec] = (), combine_lora: bool = True
               ) -> Iterator[LoadedModel | None]:
    """The model to run, on one process or on `tensor_parallel` torchrun ranks, with the LoRA
    adapters `lora` installed (`attach_loras`: `combine_lora` puts them all in one slot,
    otherwise one slot each; their names are `loaded.model.lora.names`).

    tensor_parallel 1: `load_model`. Otherwise every rank joins the process group (gloo on CPU,
    NCCL on CUDA), loads its shard and its part of every adapter; rank 0 gets a LoadedModel
    whose `model` is a LeaderModel, and on leaving the block the others are told to stop. The
    other ranks follow rank 0 inside this call and then get None: the caller has nothing more
    to do.
    """
    if tensor_parallel < 1:
        raise InvalidParameterError("tensor_parallel", f"must be >= 1, got {tensor_parallel}")
    if tensor_parallel == 1:
        loaded = load_model(path, dtype=dtype, device=device)
        attach_loras(loaded.model, loaded.config, lora, combine=combine_lora)
        yield loaded
        return
    rank, local_rank = torchrun_rank(tensor_parallel)
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        loaded = load_model(path, dtype=dtype, device=dev, tensor_parallel=(rank, tensor_parallel))
        attach_loras(loaded.model, loaded.config, lora, combine=combine_lora,
                     shard=TensorShard(rank, tensor_parallel, loaded.config))
        if rank != 0:
            follow(loaded.model)
            yield None
            return
        leader = LeaderModel(loaded.model)
        try:
            yield replace(loaded, model=leader)  # type: ignore[arg-type]
        finally:
            leader.shutdown()
    finally:
        dist.destroy_process_group()
