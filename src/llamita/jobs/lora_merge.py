"""`llamita lora merge`: fold LoRA adapters into a base GGUF model, W' = W + Σ scale · B A, and
write a new GGUF file (tensors stream through the quantize path one at a time)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from llamita.engine.loader import resolve_model_path
from llamita.engine.lora_attach import parse_lora_spec
from llamita.errors import InvalidParameterError, ModelFileError
from llamita.weights.checkpoint import gguf_name
from llamita.weights.gguf import config_from_gguf
from llamita.weights.gguf_reader import GGUFFile
from llamita.weights.gguf_writer import GGUFSource, QuantizeReport, TensorPlan, write_quantized
from llamita.weights.lora_files import read_lora
from llamita.weights.meta import rotate_half_to_interleaved
from llamita.weights.quant_mix import file_type
from llamita.weights.quants import GGMLType, quantize

KEEP = "keep"  # --type keep: every tensor in its base type (the default)


class MergedSource:
    """A base GGUF file with LoRA updates added to some of its matrices, as a TensorSource.

    keep_types: merged tensors report their base type and `raw` gives the merged tensor
    re-encoded in it, so a writer that keeps every type writes them merged; otherwise they
    report F32 and the writer encodes them from `float32` to the file type asked for.
    """

    def __init__(self, base: GGUFSource, deltas: dict[str, torch.Tensor], keep_types: bool) -> None:
        self.base = base
        self.deltas = deltas  # GGUF name -> (out, in) float32 in GGUF row order
        self.keep_types = keep_types
        self.path, self.file_size, self.architecture = base.path, base.file_size, base.architecture

    def metadata_items(self) -> Iterator[tuple[str, Any, int, int | None]]:
        return self.base.metadata_items()

    def tensor_infos(self) -> list[tuple[str, tuple[int, ...], GGMLType]]:
        return [
            (name, shape, GGMLType.F32 if name in self.deltas and not self.keep_types else t)
            for name, shape, t in self.base.tensor_infos()
        ]

    def float32(self, name: str) -> torch.Tensor:
        x = self.base.float32(name)
        return x + self.deltas[name] if name in self.deltas else x

    def raw(self, name: str) -> np.ndarray:
        if name not in self.deltas:
            return self.base.raw(name)
        stored = GGMLType(self.base.gguf.tensors[name].ggml_type)
        return quantize(self.float32(name), stored if self.keep_types else GGMLType.F32).numpy()


def merge_lora(
    base_path: str | os.PathLike[str],
    loras: Sequence[str],
    output: str | os.PathLike[str],
    type_name: str = KEEP,
    on_tensor: Callable[[TensorPlan, int, int], None] | None = None,
) -> QuantizeReport:
    """Write `base_path` with the adapters `loras` (`PATH[:SCALE]` each) merged in to `output`.

    type_name: "keep" (each tensor keeps the base's type: merged matrices are re-encoded in it)
    or a `llamita quantize` type (F16, Q8_0, Q4_K_M ...) for the whole file.
    """
    if not loras:
        raise InvalidParameterError("lora", "give at least one adapter to merge")
    ft = None if type_name.lower() == KEEP else file_type(type_name)
    gguf = GGUFFile(resolve_model_path(base_path))  # a path or a library name
    try:
        cfg = config_from_gguf(gguf)
        deltas: dict[str, torch.Tensor] = {}
        for spec in map(parse_lora_spec, loras):
            for module, layer in read_lora(spec.path, cfg).layers.items():
                delta = spec.scale * layer.delta_weight()
                if module.endswith(("q_proj", "k_proj")):  # to GGUF's interleaved RoPE rows
                    heads = cfg.n_heads if module.endswith("q_proj") else cfg.n_kv_heads
                    delta = rotate_half_to_interleaved(delta, heads)
                name = gguf_name(module + ".weight")
                if name not in gguf.tensors:
                    raise ModelFileError(f"{base_path}: no tensor '{name}' to merge the adapter into")
                deltas[name] = deltas[name] + delta if name in deltas else delta
        source = MergedSource(GGUFSource(gguf), deltas, keep_types=ft is None)
        # Merging re-encodes the matrices it touches: that is the point, not an accident.
        return write_quantized(source, output, ft, allow_requantize=True, on_tensor=on_tensor)
    finally:
        gguf.close()
