"""GPU/CPU layer offload: the first N blocks (and their KV cache) on the GPU, the rest on the CPU.

The token embedding, the blocks after N, the final norm and the output projection stay on the
CPU. Each block is wrapped in `OnDevice`, which brings the hidden states to the block's device:
they cross over twice per forward pass, CPU -> GPU before block 0 and GPU -> CPU before block
N, and are never copied in between. The per-pass tensors every block reads (RoPE cos/sin,
positions, mask, cache rows) are moved once per device and pass, through a shared memo. The KV
caches move each layer's slab to the device its keys come from on the first write
(model/kv_cache.py, model/paged_kv_cache.py), so caches built on the CPU follow the layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from llamita.model.attention_inputs import AttentionInputs

if TYPE_CHECKING:
    from llamita.model.transformer import Transformer


def layer_devices(n_layers: int, gpu_layers: int, gpu: torch.device) -> list[torch.device]:
    """Where each block runs: the first `gpu_layers` on `gpu`, the rest on the CPU."""
    if not 0 <= gpu_layers <= n_layers:
        raise ValueError(f"gpu_layers must be in 0..{n_layers}, got {gpu_layers}")
    return [gpu if i < gpu_layers else torch.device("cpu") for i in range(n_layers)]


class _Moved:
    """A pass's attention inputs moved to one device: moved once, for the first block there, and
    shared by the others (the source is held, so `is` cannot match a later pass's object)."""

    def __init__(self) -> None:
        self.last: tuple[AttentionInputs, AttentionInputs] | None = None  # (source, moved)

    def step(self, step: AttentionInputs, device: torch.device) -> AttentionInputs:
        if self.last is None or self.last[0] is not step:
            self.last = (step, step.moved(lambda t: t if t.device == device else _to(t, device)))
        return self.last[1]


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    # Host-to-GPU copies may overlap; a copy to the CPU must be complete before it is read.
    return t.to(device, non_blocking=device.type == "cuda")


class OnDevice(nn.Module):
    """Runs `block` on `device`, moving the hidden states and its tensor arguments there."""

    def __init__(self, block: nn.Module, device: torch.device, memo: _Moved) -> None:
        super().__init__()
        self.inner = block.to(device)
        self.device = device
        self._memo = memo

    def forward(self, x: torch.Tensor, step: AttentionInputs) -> torch.Tensor:
        out: torch.Tensor = self.inner(_to(x, self.device), self._memo.step(step, self.device))
        return out


def offload_layers(model: Transformer, gpu_layers: int, gpu: torch.device) -> Transformer:
    """Place `model` (a Transformer, on the CPU) with its first `gpu_layers` blocks on `gpu`,
    in place. Everything but those blocks stays on the CPU; the model's `device` (where its
    inputs go and its logits come out) is the CPU."""
    devices = layer_devices(len(model.layers), gpu_layers, gpu)
    memos = {d: _Moved() for d in set(devices)}
    for i, d in enumerate(devices):
        model.layers[i] = OnDevice(model.layers[i], d, memos[d])
    return model
