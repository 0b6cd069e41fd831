"""LoRA adapters applied without merging: y = base(x) + scale · (x Aᵀ) Bᵀ (Hu et al. 2021).

`LoraLinear` wraps any linear module (nn.Linear, Int4Linear, Int8Linear, or a wrapper another
feature puts there) and leaves it untouched, so the base weights stay shared and may stay
quantized. It holds one or more adapter *slots*; which slot each batch row uses is chosen per
forward pass through the model's `LoraSlots` (`Transformer.lora`), so requests with different
adapters (or none) run in the same batch. Rows are grouped by slot: each group costs two thin
matmuls of rank r.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from llamita.kernels.int4 import dequantize_int4
from llamita.kernels.int8 import dequantize_int8
from llamita.model.linear import Int4Linear, Int8Linear

if TYPE_CHECKING:
    from llamita.model.transformer import Transformer


class LinearLayer(Protocol):
    """What LoRA needs of the layer it wraps: nn.Linear, Int4Linear, Int8Linear, or a wrapper
    another feature puts there with the same interface."""

    in_features: int
    out_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class LoraSlots:
    """The adapters a model holds (`names`: slot -> name) and which slot each row of the
    current batch uses, set by the model for one forward pass.

    `groups` is a list of (slot, row indices or None = every row); empty means the base only.
    Rows with slot -1 use no adapter and are in no group.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.groups: list[tuple[int, torch.Tensor | None]] = []

    def slot(self, name: str) -> int:
        """The slot of adapter `name`; KeyError if the model holds no such adapter."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(name) from None

    @contextmanager
    def select(self, adapters: torch.Tensor | None, batch: int) -> Iterator[None]:
        """Within the block, row b of the batch uses slot `adapters[b]` (-1: none).
        adapters: (B,) integers, or None for the base model on every row."""
        if adapters is None:
            yield
            return
        if adapters.shape != (batch,):
            raise ValueError(f"adapters must have shape ({batch},), got {tuple(adapters.shape)}")
        slots = adapters.tolist()
        distinct = sorted(set(slots) - {-1})
        if len(distinct) == 1 and -1 not in slots:
            groups: list[tuple[int, torch.Tensor | None]] = [(distinct[0], None)]
        else:
            groups = [(k, (adapters == k).nonzero().squeeze(1)) for k in distinct]
        self.groups = groups
        try:
            yield
        finally:
            self.groups = []


class LoraLinear(nn.Module):
    """`base` plus low-rank updates, one per adapter slot.

    A slot holds A (r, in) and B (out, r) with the adapter's scale already folded into B. The
    update is computed in A's dtype (float32 while training) and added in the base's dtype.
    """

    def __init__(self, base: LinearLayer, slots: LoraSlots) -> None:
        super().__init__()
        self.base = base
        self.slots = slots
        self.lora_A = nn.ParameterDict()  # slot (as str) -> (r, in)
        self.lora_B = nn.ParameterDict()  # slot (as str) -> (out, r), scale folded in

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def set_slot(
        self, slot: int, a: torch.Tensor, b: torch.Tensor, scale: float = 1.0, trainable: bool = False
    ) -> None:
        """Install A (r, in) and scale·B (out, r) as `slot` (replacing what was there)."""
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA A {tuple(a.shape)} and B {tuple(b.shape)} do not fit together")
        if a.shape[1] != self.in_features or b.shape[0] != self.out_features:
            raise ValueError(
                f"LoRA of shape {tuple(b.shape[:1]) + tuple(a.shape[1:])} does not fit a "
                f"{self.out_features}x{self.in_features} linear layer"
            )
        self.lora_A[str(slot)] = nn.Parameter(a, requires_grad=trainable)
        self.lora_B[str(slot)] = nn.Parameter(b * scale if scale != 1.0 else b, requires_grad=trainable)

    def drop_slot(self, slot: int) -> None:
        if str(slot) in self.lora_A:
            del self.lora_A[str(slot)], self.lora_B[str(slot)]

    def delta(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        """scale · (x Aᵀ) Bᵀ for one slot, in x's dtype: (..., in) -> (..., out)."""
        a: torch.Tensor = self.lora_A[str(slot)]
        b: torch.Tensor = self.lora_B[str(slot)]
        return ((x.to(a.dtype) @ a.T) @ b.T).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for slot, rows in self.slots.groups:
            if str(slot) not in self.lora_A:
                continue  # this adapter does not target this layer
            if rows is None:
                y = y + self.delta(x, slot)
            else:
                y = y.index_add(0, rows, self.delta(x[rows], slot))
        return y

    def extra_repr(self) -> str:
        return f"slots={sorted(int(k) for k in self.lora_A)}"


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """Every LoraLinear in `model` by the canonical name of the layer it wraps
    ("layers.0.self_attn.q_proj")."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def wrap_layers(model: Transformer, names: set[str]) -> dict[str, LoraLinear]:
    """Wrap the linear modules named `names` ("layers.0.self_attn.q_proj") in LoraLinear, once;
    return every LoraLinear of the model by name. `model.lora` is their shared LoraSlots."""
    found = lora_layers(model)
    for name in sorted(names - set(found)):
        parent, _, child = name.rpartition(".")
        try:
            owner = model.get_submodule(parent)
            module = getattr(owner, child)
        except AttributeError:
            raise KeyError(f"the model has no layer named {name!r}") from None
        wrapper = LoraLinear(module, model.lora)
        setattr(owner, child, wrapper)
        found[name] = wrapper
    return found


def install_adapter(
    model: Transformer, name: str, weights: dict[str, tuple[torch.Tensor, torch.Tensor, float]], trainable: bool = False
) -> int:
    """Add adapter `name` to the model in a new slot (or replace the one of that name); return
    the slot.

    weights: module name -> (A (r, in), B (out, r), scale). Layers it does not target keep no
    entry for the slot, and their rows get no update there.
    """
    slots = model.lora
    if name in slots.names:
        slot = slots.slot(name)
    else:
        slot = len(slots.names)
        slots.names.append(name)
    layers = wrap_layers(model, set(weights))
    for layer in layers.values():
        layer.drop_slot(slot)
    device = model.device
    for module, (a, b, scale) in weights.items():
        layers[module].set_slot(slot, a.to(device), b.to(device), scale, trainable)
    return slot


class _FrozenCompactMatmul(torch.autograd.Function):
    """x Wᵀ for a frozen compact weight, expanded from its codes in the forward pass and again
    in the backward pass instead of being kept: training memory stays that of the codes."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        ctx.module = module
        return torch.nn.functional.linear(x, dense_weight(module, x.dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad @ dense_weight(ctx.module, grad.dtype), None


def dense_weight(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weight of a compact linear (Int4Linear / Int8Linear) expanded to `dtype`."""
    if isinstance(module, Int4Linear):
        return dequantize_int4(module.weight_int4, dtype)
    if isinstance(module, Int8Linear):
        return dequantize_int8(module.weight_int8, dtype)
    raise TypeError(f"{type(module).__name__} is not a compact linear layer")


class TrainableCompactLinear(nn.Module):
    """A frozen Int4Linear / Int8Linear that gradients can flow through (to its input): the
    QLoRA-style base of `llamita finetune`, dequantized per layer on the fly."""

    def __init__(self, base: Int4Linear | Int8Linear) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x) if not torch.is_grad_enabled() else _FrozenCompactMatmul.apply(x, self.base)
        return y


def make_compact_trainable(model: nn.Module) -> int:
    """Wrap every Int4Linear / Int8Linear of `model` in TrainableCompactLinear (including the
    output head); return how many were wrapped."""
    n = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, (Int4Linear, Int8Linear)) and not name.endswith(".base"):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, TrainableCompactLinear(module))
            n += 1
    return n
