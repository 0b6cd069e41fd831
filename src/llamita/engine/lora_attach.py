"""LoRA adapters on a loaded model: `--lora [NAME=]PATH[:SCALE]` specs, reading them against the
base model, and installing them into adapter slots (model/lora_linear.py) without merging."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from llamita.config import ModelConfig
from llamita.errors import InvalidParameterError
from llamita.model.lora_linear import install_adapter
from llamita.model.transformer import Transformer
from llamita.weights.lora_files import LoraAdapter, adapter_name, read_lora
from llamita.weights.shard import TensorShard


@dataclass(frozen=True)
class LoraSpec:
    """One adapter to load: its file or folder, a multiplier on its own scale (1 = as trained)
    and the name requests use to pick it (default: the file or folder name)."""

    path: Path
    scale: float = 1.0
    name: str | None = None

    @property
    def resolved_name(self) -> str:
        return self.name or adapter_name(self.path)


def parse_lora_spec(text: str | os.PathLike[str] | LoraSpec) -> LoraSpec:
    """`[NAME=]PATH[:SCALE]` -> LoraSpec. A trailing `:x` counts as the scale only when x is a
    number, so paths with colons still work."""
    if isinstance(text, LoraSpec):
        return text
    text = os.fspath(text)
    name = None
    head, eq, rest = text.partition("=")
    if eq and head and "/" not in head and os.sep not in head:
        name, text = head, rest
    path, colon, tail = text.rpartition(":")
    scale = 1.0
    if colon and path:
        try:
            scale = float(tail)
            text = path
        except ValueError:
            pass
    if not text:
        raise InvalidParameterError("lora", f"no adapter path in {text!r}; use [NAME=]PATH[:SCALE]")
    return LoraSpec(Path(text).expanduser(), scale, name)


def combined_weights(
    adapters: Sequence[LoraAdapter], scales: Sequence[float]
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Several adapters as one: per layer, A stacked over ranks and B side by side with each
    adapter's scale folded in, so (x Aᵀ) Bᵀ is exactly the sum of their updates."""
    out: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for adapter, user_scale in zip(adapters, scales):
        for module, layer in adapter.layers.items():
            a_parts, b_parts = out.setdefault(module, ([], []))
            a_parts.append(layer.a)
            b_parts.append(layer.b * (layer.scale * user_scale))
    return {m: (torch.cat(a), torch.cat(b, dim=1), 1.0) for m, (a, b) in out.items()}


def shard_weights(
    weights: dict[str, tuple[torch.Tensor, torch.Tensor, float]], shard: TensorShard
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """One tensor-parallel rank's part of an adapter (engine/tensor_parallel.py).

    A column-parallel layer (q/k/v, gate/up) keeps the B rows of its own outputs and all of A.
    A row-parallel layer (o_proj, down_proj) keeps the A columns of its own inputs and all of
    B, and the update goes on the linear inside the all-reduce (`RowParallel.inner`): each
    rank adds B (A_r x_r), and the sum over ranks is B A x, as one process computes it.
    """
    out = {}
    for module, (a, b, scale) in weights.items():
        split = shard.split(module + ".weight")
        if split is None:
            out[module] = (a, b, scale)
            continue
        dim, start, stop = split
        if dim == 0:
            out[module] = (a, b[start:stop], scale)
        else:
            out[module + ".inner"] = (a[:, start:stop], b, scale)
    return out


def combined_name(specs: Sequence[str | os.PathLike[str] | LoraSpec]) -> str:
    """The slot `attach_loras(..., combine=True)` installs `specs` in: their names joined by '+'."""
    return "+".join(parse_lora_spec(s).resolved_name for s in specs)


def attach_loras(
    model: Transformer,
    config: ModelConfig,
    specs: Sequence[str | os.PathLike[str] | LoraSpec],
    *,
    combine: bool,
    shard: TensorShard | None = None,
) -> list[str]:
    """Read every adapter in `specs` and install it in `model`; return the slot names.

    combine: all of them in one slot named after them joined by '+', applied together to every
    row (`llamita run/chat`, `LLM(lora=...)`, like llama.cpp's repeated --lora); otherwise one
    slot each, picked per request (`llamita serve`).
    shard: `model` is this tensor-parallel rank's shard (`config` is still the whole model's,
    which the adapters are checked against); each rank installs its part in the same slots.
    """
    parsed = [parse_lora_spec(s) for s in specs]
    names = [s.resolved_name for s in parsed]
    if len(set(names)) != len(names):
        raise InvalidParameterError(
            "lora", f"two adapters are named alike ({', '.join(names)}); name them with NAME=PATH"
        )
    adapters = [read_lora(s.path, config, n) for s, n in zip(parsed, names)]

    def install(name: str, weights: dict[str, tuple[torch.Tensor, torch.Tensor, float]]) -> int:
        return install_adapter(model, name, weights if shard is None else shard_weights(weights, shard))

    if combine:
        if not adapters:
            return []
        return [model.lora.names[install(combined_name(parsed), combined_weights(adapters, [s.scale for s in parsed]))]]
    for adapter, spec in zip(adapters, parsed):
        install(adapter.name, combined_weights([adapter], [spec.scale]))
    return list(model.lora.names)
