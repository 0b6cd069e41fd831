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

import torch
from torch import nn


def layer_devices(n_layers: int, gpu_layers: int, gpu: torch.device) -> list[torch.device]:
    """Where each block runs: the first `gpu_layers` on `gpu`, the rest on the CPU."""
    if not 0 <= gpu_layers <= n_layers:
        raise ValueError(f"gpu_layers must be in 0..{n_layers}, got {gpu_layers}")
    return [gpu if i < gpu_layers else torch.device("cpu") for i in range(n_layers)]


class _Moved:
    """The per-pass arguments already moved to one device. Keyed by the source tensor's id and
    version (an in-place change makes a new key); the sources are kept alive here, so an id
    cannot be reused while it is a key."""

    def __init__(self) -> None:
        self.sources: list[torch.Tensor] = []
        self.moved: dict[tuple[int, int], torch.Tensor] = {}

    def get(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        if t.device == device:
            return t
        key = (id(t), t._version)
        if key not in self.moved:
            if len(self.sources) >= 16:  # a pass has at most 5: these are earlier passes'
                self.sources, self.moved = [], {}
            self.sources.append(t)
            self.moved[key] = _to(t, device)
        return self.moved[key]


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

    def forward(self, x: torch.Tensor, *args: object) -> torch.Tensor:
        moved = [self._memo.get(a, self.device) if isinstance(a, torch.Tensor) else a for a in args]
        return self.inner(_to(x, self.device), *moved)


def offload_layers(model: nn.Module, gpu_layers: int, gpu: torch.device) -> nn.Module:
    """Place `model` (a Transformer, on the CPU) with its first `gpu_layers` blocks on `gpu`,
    in place. Everything but those blocks stays on the CPU; the model's `device` (where its
    inputs go and its logits come out) is the CPU."""
    devices = layer_devices(len(model.layers), gpu_layers, gpu)
    memos = {d: _Moved() for d in set(devices)}
    for i, d in enumerate(devices):
        model.layers[i] = OnDevice(model.layers[i], d, memos[d])
    return model
