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
from dataclasses import astuple, dataclass, fields, replace

import torch
import torch.distributed as dist

from llamita.config import ModelConfig
from llamita.engine.loader import LoadedModel, load_model, resolve_device
from llamita.engine.lora_attach import LoraSpec, attach_loras
from llamita.errors import InvalidParameterError
from llamita.model.attention_maps import check_one_sequence
from llamita.model.kv_cache import KVCache
from llamita.model.lora_linear import LoraSlots
from llamita.model.paged_kv_cache import PagedKVCache
from llamita.model.transformer import Transformer
from llamita.weights.shard import TensorShard

# What rank 0 is about to run: the first field of every message's StepHeader.
_STOP, _FORWARD, _HIDDEN, _LOGITS, _ATTENTION = 0, 1, 2, 3, 4
_NO_CACHE, _STATIC, _PAGED = 0, 1, 2
_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@dataclass(frozen=True)
class ForwardInputs:
    """A forward call's inputs as rank 0 received them (what `Transformer.forward` and
    `hidden_states` take), positions filled in."""

    tokens: torch.Tensor  # (B, S)
    positions: torch.Tensor  # (B, S)
    cache: KVCache | PagedKVCache | None = None
    rows: torch.Tensor | None = None  # (B,) static-cache rows; None: all, in order
    last_only: bool = False
    adapters: torch.Tensor | None = None  # (B,) LoRA slots; None: the base model


@dataclass(frozen=True)
class StepHeader:
    """The fixed-size int64 message that opens each step: the operation and the shapes of the
    payload that follows (a count of -1: that input is None). For a forward pass or attention
    maps one int64 payload follows: tokens, positions, cache rows, block tables, LoRA slots and
    freed cache ids, in that order; for logits, `batch` x `seqlen` (= dim) hidden states in
    `dtype`."""

    op: int
    batch: int = 0
    seqlen: int = 0
    last_only: int = 0
    cache_kind: int = _NO_CACHE
    cache_id: int = 0  # rank 0's name for the cache, the same on every rank
    cache_a: int = 0  # static cache: rows; paged: blocks
    cache_b: int = 0  # static cache: positions per row; paged: positions per block
    dtype: int = 0  # index in _DTYPES
    n_rows: int = -1
    table_rows: int = 0
    table_cols: int = 0
    n_adapters: int = -1
    n_freed: int = 0

    def to_tensor(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(astuple(self), dtype=torch.int64, device=device)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> StepHeader:
        return cls(*t.tolist())

    @classmethod
    def empty(cls, device: torch.device) -> torch.Tensor:
        """A tensor to receive a header into."""
        return torch.empty(len(fields(cls)), dtype=torch.int64, device=device)


def encode_step(
    op: int, step: ForwardInputs, cache_id: int, freed: list[int], device: torch.device
) -> tuple[StepHeader, torch.Tensor]:
    """The header and the int64 payload (on `device`, the one the ranks exchange tensors on)
    that tell the other ranks to run `step`; `decode_step` turns them back into it."""
    cache, rows, adapters = step.cache, step.rows, step.adapters
    kind, a, b, dt, tables = _NO_CACHE, 0, 0, 0, None
    if isinstance(cache, PagedKVCache):
        kind, a, b, tables = _PAGED, cache.n_blocks, cache.block_size, cache.tables
    elif isinstance(cache, KVCache):
        kind, a, b = _STATIC, cache.n_rows, cache.max_len
    if cache is not None:
        dt = _DTYPES.index(cache.k[0].dtype)
    t_rows, t_cols = tables.shape if tables is not None else (0, 0)
    bsz, seqlen = step.tokens.shape
    header = StepHeader(
        op,
        bsz,
        seqlen,
        last_only=int(step.last_only),
        cache_kind=kind,
        cache_id=cache_id,
        cache_a=a,
        cache_b=b,
        dtype=dt,
        n_rows=-1 if rows is None else rows.numel(),
        table_rows=t_rows,
        table_cols=t_cols,
        n_adapters=-1 if adapters is None else adapters.numel(),
        n_freed=len(freed),
    )
    parts = [step.tokens.reshape(-1), step.positions.reshape(-1)]
    parts += [t.reshape(-1) for t in (rows, tables, adapters) if t is not None]
    parts.append(torch.tensor(freed, dtype=torch.int64))
    return header, torch.cat([p.to(torch.int64).to(device) for p in parts])


def payload_size(header: StepHeader) -> int:
    """int64 elements of the payload that follows `header` (a forward pass or attention maps)."""
    return sum(_payload_sizes(header))


def _payload_sizes(h: StepHeader) -> list[int]:
    n_tok = h.batch * h.seqlen
    return [n_tok, n_tok, max(h.n_rows, 0), h.table_rows * h.table_cols, max(h.n_adapters, 0), h.n_freed]


def decode_step(
    header: StepHeader, payload: torch.Tensor, caches: dict[int, KVCache | PagedKVCache], config: ModelConfig
) -> ForwardInputs:
    """`encode_step` undone on another rank: the step, its cache taken from `caches` (created
    there at first use, bound to the step's block tables); caches rank 0 freed are dropped."""
    h = header
    tokens, positions, rows, tables, adapters, freed = payload.split(_payload_sizes(h))
    for gone in freed.tolist():
        caches.pop(gone, None)
    cache: KVCache | PagedKVCache | None = None
    if h.cache_kind != _NO_CACHE:
        if h.cache_id not in caches:
            make = KVCache if h.cache_kind == _STATIC else PagedKVCache
            caches[h.cache_id] = make(config, h.cache_a, h.cache_b, dtype=_DTYPES[h.dtype], device=payload.device)
        cache = caches[h.cache_id]
        if isinstance(cache, PagedKVCache):
            cache.bind(tables.view(h.table_rows, h.table_cols))
    return ForwardInputs(
        tokens.view(h.batch, h.seqlen),
        positions.view(h.batch, h.seqlen),
        cache,
        rows if h.n_rows >= 0 else None,
        bool(h.last_only),
        adapters if h.n_adapters >= 0 else None,
    )


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
        self._cache_ids: weakref.WeakKeyDictionary[KVCache | PagedKVCache, int] = weakref.WeakKeyDictionary()
        self._next_id = itertools.count(1)
        self._freed: list[int] = []  # caches rank 0 dropped: the followers drop theirs too
        self._closed = False

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def lora(self) -> LoraSlots:
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
        step = self._announce(_FORWARD, _inputs(tokens, positions, cache, rows, last_only, adapters))
        return _run(self.model, _FORWARD, step)

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
        self._send_header(StepHeader(_LOGITS, flat.shape[0], flat.shape[1], dtype=_DTYPES.index(flat.dtype)))
        dist.broadcast(flat, 0, group=self.group)
        return self.model.logits(flat).reshape(*hidden.shape[:-1], -1)

    def attention_maps(self, tokens: torch.Tensor, adapters: torch.Tensor | None = None) -> torch.Tensor:
        """Every layer's and head's attention weights for one sequence (1, S): (n_layers,
        n_heads, S, S) float32. Each rank computes those of its heads; rank 0 gathers them in
        head order (ranks hold consecutive heads)."""
        check_one_sequence(tokens)  # before the others are told: they would fail
        step = self._announce(_ATTENTION, _inputs(tokens, adapters=adapters))
        return _gather_heads(self.model.attention_maps(step.tokens, step.adapters), self.group)

    def hidden_states(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | PagedKVCache | None = None,
        rows: torch.Tensor | None = None,
        last_only: bool = False,
        adapters: torch.Tensor | None = None,
    ) -> torch.Tensor:
        step = self._announce(_HIDDEN, _inputs(tokens, positions, cache, rows, last_only, adapters))
        return _run(self.model, _HIDDEN, step)

    def _cache_id(self, cache: KVCache | PagedKVCache) -> int:
        if cache not in self._cache_ids:
            n = self._cache_ids[cache] = next(self._next_id)
            weakref.finalize(cache, self._freed.append, n)
        return self._cache_ids[cache]

    def _announce(self, op: int, step: ForwardInputs) -> ForwardInputs:
        if self._closed:
            raise RuntimeError("the tensor-parallel group has been shut down")
        cache_id = 0 if step.cache is None else self._cache_id(step.cache)
        freed, self._freed[:] = list(self._freed), []
        header, payload = encode_step(op, step, cache_id, freed, self.device)
        self._send_header(header)
        dist.broadcast(payload, 0, group=self.group)
        return step

    def _send_header(self, header: StepHeader) -> None:
        if self._closed:
            raise RuntimeError("the tensor-parallel group has been shut down")
        dist.broadcast(header.to_tensor(self.device), 0, group=self.group)

    def shutdown(self) -> None:
        """Tell the other ranks to stop following (idempotent)."""
        if not self._closed:
            self._send_header(StepHeader(_STOP))
            self._closed = True


def _inputs(
    tokens: torch.Tensor,
    positions: torch.Tensor | None = None,
    cache: KVCache | PagedKVCache | None = None,
    rows: torch.Tensor | None = None,
    last_only: bool = False,
    adapters: torch.Tensor | None = None,
) -> ForwardInputs:
    """A call's inputs, positions filled in as the model would (0..S-1 on every row)."""
    if positions is None:
        bsz, seqlen = tokens.shape
        positions = torch.arange(seqlen, device=tokens.device).expand(bsz, seqlen)
    return ForwardInputs(tokens, positions, cache, rows, last_only, adapters)


def _run(model: Transformer, op: int, step: ForwardInputs) -> torch.Tensor:
    """This rank's part of `op` (_FORWARD: logits; _HIDDEN: final hidden states) for `step`."""
    run = model if op == _FORWARD else model.hidden_states
    out: torch.Tensor = run(
        step.tokens, step.positions, step.cache, step.rows, last_only=step.last_only, adapters=step.adapters
    )
    return out


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
            received = StepHeader.empty(device)
            dist.broadcast(received, 0, group=group)
            header = StepHeader.from_tensor(received)
            if header.op == _STOP:
                return steps
            if header.op == _LOGITS:  # batch rows of seqlen (= dim) features
                hidden = torch.empty(header.batch, header.seqlen, dtype=_DTYPES[header.dtype], device=device)
                dist.broadcast(hidden, 0, group=group)
                model.logits(hidden)
            else:
                payload = torch.empty(payload_size(header), dtype=torch.int64, device=device)
                dist.broadcast(payload, 0, group=group)
                step = decode_step(header, payload, caches, model.config)
                if header.op == _ATTENTION:
                    _gather_heads(model.attention_maps(step.tokens, step.adapters), group)
                else:
                    _run(model, header.op, step)
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
            yield replace(loaded, model=leader)  # type: ignore[arg-type]  # a LeaderModel stands in for the Transformer
        finally:
            leader.shutdown()
    finally:
        dist.destroy_process_group()
