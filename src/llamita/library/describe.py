"""What `llamita list` and `show` say about a model on disk, read from headers only (a GGUF's
metadata and tensor table, a folder's config.json and safetensors headers): no weights load."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamita.errors import LlamitaError
from llamita.weights.gguf_reader import GGUFFile
from llamita.weights.hf import CONFIG_FILE, HFCheckpoint, read_json
from llamita.weights.quant_mix import FILE_TYPE_NAMES

LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md")


@dataclass
class Description:
    """A model's numbers and texts. `metadata`: GGUF-style keys without the vocabulary."""

    quantization: str | None = None
    parameters: int | None = None
    architecture: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    license: str | None = None
    generation: dict[str, Any] = field(default_factory=dict)


def describe(path: Path) -> Description:
    """Describe the GGUF file or Hugging Face folder at `path`; a file that cannot be read
    gives an empty Description rather than an error, so one bad entry never breaks a list."""
    try:
        if path.is_dir():
            return _describe_folder(path)
        return _describe_gguf(path)
    except (LlamitaError, OSError, ValueError):
        return Description()


def _describe_gguf(path: Path) -> Description:
    with GGUFFile(path) as gguf:
        meta = gguf.metadata
        file_type = meta.get("general.file_type")
        params = sum(math.prod(t.shape) for t in gguf.tensors.values())
        kept = {
            k: v
            for k, v in meta.items()
            if not k.startswith("tokenizer.ggml.")
            and k != "tokenizer.chat_template"
            and not (isinstance(v, list) and len(v) > 16)
        }
        template = meta.get("tokenizer.chat_template")
        license_text = _license_beside(path) or _str(meta.get("general.license"))
        return Description(
            FILE_TYPE_NAMES.get(file_type) if isinstance(file_type, int) else None,
            params,
            _str(meta.get("general.architecture")),
            kept,
            template if isinstance(template, str) else None,
            license_text,
        )


def _describe_folder(path: Path) -> Description:
    config = read_json(path / CONFIG_FILE)
    with HFCheckpoint(path) as ckpt:
        params = sum(math.prod(s) for s in ckpt.shapes.values())
        dtypes = sorted({str(d).removeprefix("torch.") for d in ckpt.dtypes.values()})
    template = None
    if (path / "tokenizer_config.json").is_file():
        template = read_json(path / "tokenizer_config.json").get("chat_template")
    generation = read_json(path / "generation_config.json") if (path / "generation_config.json").is_file() else {}
    arch = config.get("model_type")
    return Description(
        "/".join(d.upper() for d in dtypes) or None,
        params,
        arch if isinstance(arch, str) else None,
        {k: v for k, v in config.items() if not isinstance(v, (dict, list))},
        template if isinstance(template, str) else None,
        _license_beside(path / CONFIG_FILE),
        generation,
    )


def _license_beside(path: Path) -> str | None:
    """A LICENSE file next to the model (a Hub snapshot carries the repository's)."""
    for name in LICENSE_FILES:
        candidate = path.parent / name
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8", errors="replace")
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
