"""`llamita quantize`: re-encode a model into another GGUF type (Q4_K_M, Q8_0, F16, ...).

Picks the reader for the input (a GGUF file, a Hugging Face safetensors folder or a Meta
`consolidated.*.pth` folder, each a `TensorSource`) and hands it to the GGUF writer.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from llamita.engine.loader import resolve_model_path
from llamita.weights.checkpoint import FloatCheckpointSource, checkpoint_format, open_float_checkpoint
from llamita.weights.gguf_reader import GGUFFile
from llamita.weights.gguf_writer import GGUFSource, QuantizeReport, TensorPlan, TensorSource, plan, write_quantized
from llamita.weights.quant_mix import FILE_TYPES, FileType, file_type

__all__ = ["FILE_TYPES", "QuantizeReport", "TensorPlan", "file_type", "open_source", "quantize_model", "plan_model"]


def open_source(path: str | os.PathLike[str], *, rope_scaling_factor: float | None = None) -> TensorSource:
    """The model at `path` as a tensor source, whatever its format (`rope_scaling_factor`:
    Meta folders only, see `weights/meta.py`)."""
    path = resolve_model_path(path)  # a library name works too
    if checkpoint_format(path) == "gguf":
        return GGUFSource(GGUFFile(path))
    ckpt = open_float_checkpoint(path, rope_scaling_factor=rope_scaling_factor)
    try:
        return FloatCheckpointSource(ckpt)
    except BaseException:
        ckpt.close()
        raise


def _close(source: TensorSource) -> None:
    if isinstance(source, GGUFSource):
        source.gguf.close()
    elif isinstance(source, FloatCheckpointSource):
        source.ckpt.close()


def plan_model(input_path: str | os.PathLike[str], type_name: str) -> list[TensorPlan]:
    """What each tensor would become, without writing anything (for --dry-run)."""
    source = open_source(input_path)
    try:
        return plan(source, file_type(type_name))
    finally:
        _close(source)


def quantize_model(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    type_name: str,
    *,
    allow_requantize: bool = False,
    rope_scaling_factor: float | None = None,
    on_tensor: Callable[[TensorPlan, int, int], None] | None = None,
) -> QuantizeReport:
    """Write `input_path` (GGUF file, HF or Meta folder) re-encoded as `type_name` (a key of
    FILE_TYPES) to `output_path`."""
    ft: FileType = file_type(type_name)
    source = open_source(input_path, rope_scaling_factor=rope_scaling_factor)
    try:
        return write_quantized(source, output_path, ft, allow_requantize=allow_requantize, on_tensor=on_tensor)
    finally:
        _close(source)
