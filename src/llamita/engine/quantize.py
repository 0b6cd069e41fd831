"""`llamita quantize`: re-encode a model into another GGUF type (Q4_K_M, Q8_0, F16, ...).

Picks the reader for the input (a GGUF file today; Hugging Face safetensors folders and Meta
`consolidated.*.pth` folders plug in as other `TensorSource`s) and hands it to the GGUF writer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from llamita.errors import ModelFileError, UnsupportedModelError
from llamita.weights.gguf_reader import GGUFFile
from llamita.weights.gguf_writer import (GGUFSource, QuantizeReport, TensorPlan, TensorSource,
                                        plan, write_quantized)
from llamita.weights.quant_mix import FILE_TYPES, FileType, file_type

__all__ = ["FILE_TYPES", "QuantizeReport", "TensorPlan", "file_type", "open_source",
           "quantize_model", "plan_model"]


def open_source(path: str | os.PathLike[str]) -> TensorSource:
    """The model at `path` as a tensor source, whatever its format."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"input not found: {path}")
    if path.is_dir():
        if (path / "config.json").exists():
            raise UnsupportedModelError(
                f"{path} is a Hugging Face folder; converting safetensors checkpoints is not "
                "supported yet (only GGUF input for now)")
        if (path / "params.json").exists():
            raise UnsupportedModelError(
                f"{path} is a Meta checkpoint folder; converting consolidated.*.pth is not "
                "supported yet (only GGUF input for now)")
        raise ModelFileError(f"{path} is a folder without config.json or params.json: not a model")
    return GGUFSource(GGUFFile(path))


def plan_model(input_path: str | os.PathLike[str], type_name: str) -> list[TensorPlan]:
    """What each tensor would become, without writing anything (for --dry-run)."""
    return plan(open_source(input_path), file_type(type_name))


def quantize_model(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str],
                   type_name: str, *, allow_requantize: bool = False,
                   on_tensor: Callable[[TensorPlan, int, int], None] | None = None) -> QuantizeReport:
    """Write `input_path` re-encoded as `type_name` (a key of FILE_TYPES) to `output_path`."""
    ft: FileType = file_type(type_name)
    source = open_source(input_path)
    return write_quantized(source, output_path, ft, allow_requantize=allow_requantize,
                           on_tensor=on_tensor)
