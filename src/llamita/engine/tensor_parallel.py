"""Tensor parallelism over torch.distributed: every rank holds a shard, rank 0 drives.

Launch with torchrun (`torchrun --nproc-per-node K -m llamita run ... --tensor-parallel K`).
Each rank loads only its slice of the weights (`weights/shard.py`) into a Transformer whose
layers all-reduce and all-gather with the others (`model/tensor_parallel.py`). Rank 0 runs the
ordinary LLMEngine (or LLM) over a `LeaderModel`; before each forward pass that model
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
from llamita.engine.lora_attach import LoraSpec, attach_loras
from llamita.errors import InvalidParameterError
from llamita.model.attention_maps import check_one_sequence
from llamita.model.kv_cache import KVCache
from llamita.model.paged_kv_cache import PagedKVCache
from llamita.model.transformer import Transformer
from llamita.weights.shard import TensorShard

# Message header, int64: what rank 0 is about to run. Then, for a forward pass or attention
# maps, one int64 payload tensor with the tokens, positions, cache rows, block tables, LoRA slots
# per row and freed cache ids, in order; for logits, the (B, dim) hidden states in dtype `dt`.
_STOP, _FORWARD, _HIDDEN, _LOGITS, _ATTENTION = 0, 1, 2, 3, 4
_NO_CACHE, _STATIC, _PAGED = 0, 1, 2
_HEADER = 14  # op, B, S, last_only, kind, cache id, geometry a, b, dtype, n rows, tables (r, c),
# n adapter slots, n freed
_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def torchrun_rank(size: int) -> tuple[int, int]:
    """(rank, local rank) of this process in a torchrun launch of `size` processes."""
    world = os.environ.get("WORLD_SIZE")
    if world is None or "RANK" not in os.environ:
        raise InvalidParameterError(
            "tensor_parallel",
            f"--tensor-parallel {size} needs one process per rank: launch with "
            f"`torchrun --nproc-per-node {size} -m llamita ...`",
        )
    if int(world) != size:
        raise InvalidParameterError(
            "tensor_parallel", f"--tensor-parallel {size} but torchrun started {world} processes"
        )
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


class LeaderModel:
    """Rank 0's model: announces each call to the other ranks, then runs its own shard.

    Stands in for the Transformer wherever the engine and the glass box use one (`__call__`,
    `hidden_states`, `logits`, `attention_maps`, `norm`, `layers`, `config`, `dtype`,
    `device`). `config` is this rank's view (its heads, the whole vocabulary), as the KV
    caches rank 0 creates must hold only its heads.
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
        """The shard's adapter slots (model/lora_linear.py); every rank holds the same slots, each
        with its part of the adapters (`open_model(lora=...)`)."""
        return self.model.lora

    def __call__(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | PagedKVCache | None = None,
        rows: torch.Tensor | None = None,
        last_only: bool = False,
        adapters: torch.Tensor | None = None,
    ) -> torch.Tensor:
        positions = self._announce(_FORWARD, tokens, positions, cache, rows, last_only, adapters)
        return self.model(tokens, positions, cache, rows, last_only=last_only, **_lora(adapters))

    forward = __call__

    @property
    def norm(self) -> torch.nn.Module:
        """The final RMSNorm: every rank holds all of it, so rank 0 runs it alone."""
        return self.model.norm

    @property
    def layers(self) -> torch.nn.ModuleList:
        """Rank 0's blocks, to hook during a call (their outputs are the whole residual stream,
        all-reduced). Calling one directly would wait forever for the other ranks."""
        return self.model.layers

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output projection of final hidden states (..., dim) -> (..., vocab) float32: every
        rank projects onto its vocabulary rows and the logits are gathered."""
        if hidden.dtype not in _DTYPES:
            raise TypeError(f"hidden states in {hidden.dtype}; the ranks exchange {_DTYPES}")
        flat = hidden.reshape(-1, hidden.shape[-1]).contiguous()
        self._send_header([_LOGITS, flat.shape[0], flat.shape[1]] + [0] * 5 + [_DTYPES.index(flat.dtype)])
        dist.broadcast(flat, 0, group=self.group)
        return self.model.logits(flat).reshape(*hidden.shape[:-1], -1)

    def attention_maps(self, tokens: torch.Tensor, adapters: torch.Tensor | None = None) -> torch.Tensor:
        """Every layer's and head's attention weights for one sequence (1, S): (n_layers,
        n_heads, S, S) float32. Each rank computes those of its heads; rank 0 gathers them in
        head order (ranks hold consecutive heads)."""
        check_one_sequence(tokens)  # before the others are told: they would fail
        self._announce(_ATTENTION, tokens, None, None, None, False, adapters)
        return _gather_heads(self.model.attention_maps(tokens, adapters), self.group)

    def hidden_states(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | PagedKVCache | None = None,
        rows: torch.Tensor | None = None,
        last_only: bool = False,
        adapters: torch.Tensor | None = None,
    ) -> torch.Tensor:
        positions = self._announce(_HIDDEN, tokens, positions, cache, rows, last_only, adapters)
        return self.model.hidden_states(tokens, positions, cache, rows, last_only=last_only, **_lora(adapters))

    def _cache_id(self, cache: object) -> int:
        if cache not in self._cache_ids:
            n = self._cache_ids[cache] = next(self._next_id)
            weakref.finalize(cache, self._freed.append, n)
        return self._cache_ids[cache]

    def _announce(
        self,
        op: int,
        tokens: torch.Tensor,
        positions: torch.Tensor | None,
        cache: KVCache | PagedKVCache | None,
        rows: torch.Tensor | None,
        last_only: bool,
        adapters: torch.Tensor | None,
    ) -> torch.Tensor:
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
        header = [
            op,
            bsz,
            seqlen,
            int(last_only),
            kind,
            cid,
            a,
            b,
            dt,
            -1 if rows is None else rows.numel(),
            t_rows,
            t_cols,
            -1 if adapters is None else adapters.numel(),
            len(freed),
        ]
        parts = [tokens.reshape(-1), positions.reshape(-1)]
        parts += [] if rows is None else [rows.reshape(-1)]
        parts += [] if tables is None else [tables.reshape(-1)]
        parts += [] if adapters is None else [adapters.reshape(-1)]
        parts.append(torch.tensor(freed, dtype=torch.int64))
        payload = torch.cat([p.to(torch.int64).to(self.device) for p in parts])
        self._send_header(header)
        dist.broadcast(payload, 0, group=self.group)
        return positions

    def _send_header(self, header: list[int]) -> None:
        if self._closed:
            raise RuntimeError("the tensor-parallel group has been shut down")
        header = header + [0] * (_HEADER - len(header))
        dist.broadcast(torch.tensor(header, dtype=torch.int64, device=self.device), 0, group=self.group)

    def shutdown(self) -> None:
        """Tell the other ranks to stop following (idempotent)."""
        if not self._closed:
            self._send_header([_STOP])
            self._closed = True


def _lora(adapters: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The LoRA-slot keyword for a forward call, only when rows use adapters."""
    return {} if adapters is None else {"adapters": adapters}


def _gather_heads(maps: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every rank's attention maps (n_layers, its heads, S, S), side by side in rank order on
    rank 0 (the others get their own back). Ranks may hold different numbers of heads: gather
    needs equal shapes, so pad, gather, trim."""
    world = dist.get_world_size(group)
    count = torch.tensor([maps.shape[1]], dtype=torch.int64, device=maps.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    sizes = [int(c) for c in counts]
    padded = torch.nn.functional.pad(maps, (0, 0, 0, 0, 0, max(sizes) - maps.shape[1])).contiguous()
    leader = dist.get_rank(group) == 0
    parts = [torch.empty_like(padded) for _ in range(world)] if leader else None
    dist.gather(padded, parts, dst=0, group=group)
    if not leader:
        return maps
    assert parts is not None
    return torch.cat([p[:, :n] for p, n in zip(parts, sizes)], dim=1)


def follow(model: Transformer, group: dist.ProcessGroup | None = None) -> int:
    """Run rank 0's forward passes on this rank's shard until it says stop; returns how many
    passes were run. Caches are created, bound and dropped as rank 0's are."""
    caches: dict[int, KVCache | PagedKVCache] = {}
    device, steps = model.device, 0
    with torch.inference_mode():
        while True:
            header = torch.empty(_HEADER, dtype=torch.int64, device=device)
            dist.broadcast(header, 0, group=group)
            (op, bsz, seqlen, last_only, kind, cid, a, b, dt, n_rows, t_rows, t_cols, n_adapters, n_freed) = (
                header.tolist()
            )
            if op == _STOP:
                return steps
            if op == _LOGITS:  # bsz rows of seqlen (= dim) features
                hidden = torch.empty(bsz, seqlen, dtype=_DTYPES[dt], device=device)
                dist.broadcast(hidden, 0, group=group)
                model.logits(hidden)
                steps += 1
                continue
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
            args = (tokens.view(bsz, seqlen), positions.view(bsz, seqlen), cache, rows if n_rows >= 0 else None)
            kw = _lora(adapters if n_adapters >= 0 else None)
            if op == _FORWARD:
                model(*args, last_only=bool(last_only), **kw)
            elif op == _ATTENTION:
                _gather_heads(model.attention_maps(args[0], **kw), group)
            else:
                model.hidden_states(*args, last_only=bool(last_only), **kw)
            steps += 1


@contextmanager
def open_model(
    path: str | os.PathLike[str] | None = None,
    *,
    tensor_parallel: int = 1,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = "auto",
    lora: Sequence[str | os.PathLike[str] | LoraSpec] = (),
    combine_lora: bool = True,
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
        attach_loras(
            loaded.model,
            loaded.config,
            lora,
            combine=combine_lora,
            shard=TensorShard(rank, tensor_parallel, loaded.config),
        )
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
