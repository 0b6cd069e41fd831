"""Write a model as a GGUF file with each tensor re-encoded to the type a quantization mix picks.

Tensors stream through one at a time (read, dequantize to float32, quantize, write), so peak
memory is about one float32 tensor whatever the model size. The file goes through the `gguf`
package's `GGUFWriter` (the reference writer llama.cpp's own converters use), into a temporary
file renamed over OUTPUT only when complete: an interrupted run never leaves half a model behind.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from llamita.errors import InvalidParameterError, ModelFileError
from llamita.weights.gguf_reader import GGUFFile
from llamita.weights.quant_mix import FileType, ModelShape, is_quantizable, tensor_type
from llamita.weights.quants import GGMLType, dequantize, quantize, tensor_nbytes

# Keys the writer sets itself, or that describe the old file rather than the new one.
_OWN_KEYS = {"general.architecture", "general.alignment", "general.file_type", "general.quantization_version"}
QUANTIZATION_VERSION = 2  # ggml's GGML_QNT_VERSION: the K-quant/legacy block layouts we write
_UNQUANTIZED = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


class TensorSource(Protocol):
    """A model to convert: metadata with GGUF value types, tensors under GGUF names and layout.

    GGUF files are one; Hugging Face and Meta checkpoints provide the same view.
    """

    path: Path
    architecture: str
    file_size: int

    def metadata_items(self) -> Iterator[tuple[str, Any, int, int | None]]:
        """(key, value, GGUF value type, array element type or None) for every key."""
        ...

    def tensor_infos(self) -> list[tuple[str, tuple[int, ...], GGMLType]]:
        """(GGUF name, torch-order shape, stored type) in file order."""
        ...

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as stored (uint8)."""
        ...

    def float32(self, name: str) -> torch.Tensor:
        """The tensor decoded to float32, in GGUF layout (Q/K rows interleaved)."""
        ...


class GGUFSource:
    """A GGUF file as a TensorSource."""

    def __init__(self, gguf: GGUFFile) -> None:
        self.gguf = gguf
        self.path = gguf.path
        self.file_size = gguf.file_size
        self.architecture = str(gguf.metadata.get("general.architecture", ""))

    def metadata_items(self) -> Iterator[tuple[str, Any, int, int | None]]:
        for key, value in self.gguf.metadata.items():
            vtype, element = self.gguf.metadata_types[key]
            yield key, value, vtype, element

    def tensor_infos(self) -> list[tuple[str, tuple[int, ...], GGMLType]]:
        return [(i.name, i.shape, GGMLType(i.ggml_type)) for i in self.gguf.tensors.values()]

    def raw(self, name: str) -> np.ndarray:
        return self.gguf.tensor_bytes(name)

    def float32(self, name: str) -> torch.Tensor:
        info = self.gguf.tensors[name]
        with warnings.catch_warnings():  # torch cannot protect read-only mapped bytes; we only read
            warnings.simplefilter("ignore", UserWarning)
            raw = torch.from_numpy(self.raw(name))
        return dequantize(raw, info.ggml_type, info.shape)


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    source_type: GGMLType
    target_type: GGMLType

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.target_type, self.n_elements)

    @property
    def source_nbytes(self) -> int:
        return tensor_nbytes(self.source_type, self.n_elements)


@dataclass
class QuantizeReport:
    """What `write_quantized` did: per tensor plans, file sizes, seconds."""

    input_path: Path
    output_path: Path
    file_type: FileType | None  # None: every tensor kept its source type
    tensors: list[TensorPlan]
    input_bytes: int
    output_bytes: int = 0
    seconds: float = 0.0
    requantized: list[str] = field(default_factory=list)

    @property
    def n_weights(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        """Tensor bits over weights (the file's own header and metadata not counted)."""
        return 8 * sum(t.nbytes for t in self.tensors) / max(1, self.n_weights)

    def by_type(self) -> list[tuple[GGMLType, int, int, int]]:
        """(type, tensor count, weights, bytes) for each output type, most weights first."""
        rows: dict[GGMLType, list[int]] = {}
        for t in self.tensors:
            r = rows.setdefault(t.target_type, [0, 0, 0])
            r[0] += 1
            r[1] += t.n_elements
            r[2] += t.nbytes
        return sorted(((k, v[0], v[1], v[2]) for k, v in rows.items()), key=lambda r: -r[2])


def model_shape(source: TensorSource) -> ModelShape:
    meta = {k: v for k, v, _, _ in source.metadata_items()}
    arch = source.architecture
    names = {name for name, _, _ in source.tensor_infos()}

    def get(key: str) -> Any:
        value = meta.get(f"{arch}.{key}")
        if value is None:
            raise ModelFileError(f"{source.path}: metadata lacks {arch}.{key}")
        return value

    n_heads = int(get("attention.head_count"))
    return ModelShape(
        n_layers=int(get("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_heads)),
        tied_embeddings="output.weight" not in names,
    )


def plan(source: TensorSource, ft: FileType) -> list[TensorPlan]:
    """The output type of every tensor, in file order."""
    shape = model_shape(source)
    return [
        TensorPlan(name, dims, stype, tensor_type(name, dims, ft, shape, stype))
        for name, dims, stype in source.tensor_infos()
    ]


def requantized_tensors(plans: list[TensorPlan]) -> list[str]:
    """Tensors that would be re-encoded from an already lossy (quantized) type."""
    return [
        p.name
        for p in plans
        if p.source_type not in _UNQUANTIZED and p.target_type != p.source_type and is_quantizable(p.name, p.shape)
    ]


def _encode(source: TensorSource, p: TensorPlan) -> np.ndarray:
    if p.target_type == p.source_type:
        return np.asarray(source.raw(p.name))  # same format: copy, no loss
    x = source.float32(p.name)
    return quantize(x, p.target_type).numpy()


@contextmanager
def atomic_gguf_writer(output: str | os.PathLike[str], architecture: str) -> Iterator[Any]:
    """A `gguf.GGUFWriter` on a hidden temporary file beside `output`, renamed to `output` only
    when the block ends normally: an interrupted or failed write never leaves a half file
    under the real name (and never replaces a good one)."""
    import gguf as gguf_pkg  # the writer is only needed here; loading a model never imports it

    output = Path(output)
    tmp = output.with_name(f".{output.name}.partial")
    writer = gguf_pkg.GGUFWriter(tmp, architecture)
    try:
        yield writer
        writer.close()
        os.replace(tmp, output)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def write_quantized(
    source: TensorSource,
    output: str | os.PathLike[str],
    ft: FileType | None,
    *,
    allow_requantize: bool = False,
    on_tensor: Callable[[TensorPlan, int, int], None] | None = None,
) -> QuantizeReport:
    """Write `source` to `output` as file type `ft`; returns what was written.

    Re-encoding tensors that are already quantized loses quality twice: it is refused with
    InvalidParameterError unless `allow_requantize`. `on_tensor(plan, index, count)` is called
    after each tensor is written (for progress bars). `ft` None keeps every tensor's type and
    the source's general.file_type (`llamita lora merge` onto a quantized base).
    """
    import gguf as gguf_pkg  # the writer is only needed here; loading a model never imports it

    output = Path(output)
    if output.resolve() == Path(source.path).resolve():
        raise InvalidParameterError(
            "output", "OUTPUT must differ from INPUT (it would be overwritten while it is read)"
        )
    if output.is_dir():
        raise InvalidParameterError("output", f"{output} is a folder; give a file name")
    plans = (
        plan(source, ft)
        if ft is not None
        else [TensorPlan(name, dims, stype, stype) for name, dims, stype in source.tensor_infos()]
    )
    lossy = requantized_tensors(plans)
    if lossy and not allow_requantize:
        kinds = sorted({p.source_type.name for p in plans if p.name in lossy})
        raise InvalidParameterError(
            "allow_requantize",
            f"{source.path.name} is already quantized ({', '.join(kinds)}); re-quantizing loses "
            "quality a second time. Pass --allow-requantize to do it anyway, or start from an "
            "F32/F16/BF16 model",
        )
    report = QuantizeReport(Path(source.path), output, ft, plans, source.file_size, requantized=lossy)
    start = time.perf_counter()
    with atomic_gguf_writer(output, source.architecture) as writer:
        for key, value, vtype, element in source.metadata_items():
            if key in _OWN_KEYS and not (ft is None and key == "general.file_type"):
                continue
            sub = gguf_pkg.GGUFValueType(element) if element is not None else None
            writer.add_key_value(key, value, gguf_pkg.GGUFValueType(vtype), sub_type=sub)
        if ft is not None:
            writer.add_uint32("general.file_type", ft.file_type)
        writer.add_uint32("general.quantization_version", QUANTIZATION_VERSION)
        for p in plans:
            writer.add_tensor_info(
                p.name,
                p.shape,
                np.dtype(np.float32),
                p.nbytes,
                raw_dtype=gguf_pkg.GGMLQuantizationType(int(p.target_type)),
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, p in enumerate(plans):
            data = _encode(source, p)
            if data.nbytes != p.nbytes:  # a bug, not bad input: never write a misaligned file
                raise AssertionError(f"{p.name}: encoded {data.nbytes} bytes, expected {p.nbytes}")
            writer.write_tensor_data(data)
            if on_tensor is not None:
                on_tensor(p, i, len(plans))
    report.output_bytes = output.stat().st_size
    report.seconds = time.perf_counter() - start
    return report
