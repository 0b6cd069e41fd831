"""Any Llama checkpoint as (ModelConfig, canonical state dict, metadata), and float checkpoints
as GGUF tensor sources for `llamita quantize`.

Three formats, told apart by what the path is: a GGUF file; a Hugging Face folder
(`config.json` + safetensors); a Meta folder (`params.json` + `consolidated.NN.pth`). The two
folder readers (`weights/hf.py`, `weights/meta.py`) share one interface, `FloatCheckpoint`:
canonical names, shapes and dtypes up front, each tensor read on demand in rotate-half layout.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from llamita.config import GenerationDefaults, ModelConfig
from llamita.errors import ModelFileError
from llamita.kernels.compact import StateDict
from llamita.weights.gguf import (
    _GLOBAL_NAMES,
    _LAYER_NAMES,
    _expected_shapes,
    canonical_name,
    gguf_state_dict,
    open_gguf,
)
from llamita.weights.hf import CONFIG_FILE, HFCheckpoint
from llamita.weights.meta import PARAMS_FILE, MetaCheckpoint, rotate_half_to_interleaved
from llamita.weights.quants import GGMLType
from llamita.weights.shard import TensorShard

FORMATS = ("gguf", "hf", "meta")


class FloatCheckpoint(Protocol):
    """A folder of float weights read lazily under canonical names (HF or Meta)."""

    path: Path
    format: str
    config: ModelConfig
    generation: GenerationDefaults | None
    file_size: int
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor as stored (rotate-half Q/K), in memory the caller owns."""
        ...

    def tensor_part(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Rows (dim 0) or columns (dim 1) [start, stop) of `tensor(name)`, reading only what
        they need (a tensor-parallel rank's slice)."""
        ...

    def tokenizer_metadata(self) -> dict[str, Any]:
        """`tokenizer.*` GGUF keys describing the folder's tokenizer."""
        ...

    def close(self) -> None: ...


def checkpoint_format(path: Path) -> str:
    """ "gguf", "hf" or "meta" for what `path` holds; ModelFileError if it is none of them."""
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        if (path / CONFIG_FILE).exists():
            return "hf"
        if (path / PARAMS_FILE).exists():
            return "meta"
        raise ModelFileError(
            f"{path} is a folder without {CONFIG_FILE} (Hugging Face) or {PARAMS_FILE} (Meta): not a model"
        )
    return "gguf"  # the reader checks the magic and says so if it is not


def open_float_checkpoint(path: Path, *, rope_scaling_factor: float | None = None) -> FloatCheckpoint:
    """The HF or Meta folder at `path`; `rope_scaling_factor` overrides Meta's guessed factor."""
    fmt = checkpoint_format(path)
    if fmt == "hf":
        return HFCheckpoint(path)
    if fmt == "meta":
        return MetaCheckpoint(path, rope_scaling_factor=rope_scaling_factor)
    raise ModelFileError(f"{path}: expected a Hugging Face or Meta model folder")


def float_state_dict(ckpt: FloatCheckpoint, dtype: torch.dtype, shard: TensorShard | None = None) -> StateDict:
    """Every tensor the model needs, converted to `dtype` one at a time (peak memory: the
    result plus one tensor). Extra tensors in the files (e.g. old `rotary_emb.inv_freq`) are
    ignored; a missing or misshapen one is a ModelFileError. With `shard`, only that
    tensor-parallel rank's slice of each tensor is read."""
    expected = _expected_shapes(ckpt.config)
    for name, shape in expected.items():
        if name not in ckpt.shapes:
            raise ModelFileError(f"{ckpt.path}: the checkpoint lacks '{name}'")
        if ckpt.shapes[name] != shape:
            raise ModelFileError(
                f"{ckpt.path}: '{name}' has shape {ckpt.shapes[name]}, expected {shape} from the model's configuration"
            )

    def read(name: str) -> torch.Tensor:
        split = shard.split(name) if shard is not None else None
        return ckpt.tensor(name) if split is None else ckpt.tensor_part(name, *split)

    return {name: read(name).to(dtype) for name in expected}


@dataclass
class Checkpoint:
    """What a reader found: `metadata` holds GGUF-style keys for every format (for a GGUF file
    its own, tokenizer included; for folders the `general.*` / `llama.*` keys it would get)."""

    format: str
    config: ModelConfig
    state: StateDict
    metadata: dict[str, Any]
    generation: GenerationDefaults | None = None
    shard: TensorShard | None = None  # tensor parallel: the slice `state` holds

    def take_state(self) -> StateDict:
        """The weights, handed over: this checkpoint keeps no reference, so tensors the model
        replaces while it is built (joined q/k/v and gate/up, model/linear.py) are freed at
        once instead of living until the checkpoint goes (the load's peak memory)."""
        state, self.state = self.state, {}
        return state


def read_checkpoint(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    compact: bool = False,
    rope_scaling_factor: float | None = None,
    tp_rank: int = 0,
    tp_size: int = 1,
) -> Checkpoint:
    """Config, weights (canonical names, `dtype`) and metadata of the model at `path`.

    `compact` keeps quantized GGUF weights small (see `gguf_state_dict`); float checkpoints
    always load dense. `rope_scaling_factor` applies to Meta folders only. With `tp_size` > 1
    only rank `tp_rank`'s slice of each weight is read (`weights/shard.py`); `config` stays the
    whole model's.
    """
    path = Path(path)
    fmt = checkpoint_format(path)
    if fmt == "gguf":
        gguf, config = open_gguf(path)
        try:
            shard = TensorShard(tp_rank, tp_size, config) if tp_size > 1 else None
            state = gguf_state_dict(gguf, config, dtype=dtype, compact=compact, shard=shard)
            return Checkpoint(fmt, config, state, dict(gguf.metadata), shard=shard)
        finally:
            gguf.close()
    ckpt = open_float_checkpoint(path, rope_scaling_factor=rope_scaling_factor)
    try:
        shard = TensorShard(tp_rank, tp_size, ckpt.config) if tp_size > 1 else None
        state = float_state_dict(ckpt, dtype, shard)
        meta = {k: v for k, v, _, _ in config_metadata(ckpt.config)}
        return Checkpoint(fmt, ckpt.config, state, meta, ckpt.generation, shard)
    finally:
        ckpt.close()


# GGUF metadata value types (docs/llama-reference.md §5.1).
U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9
_TOKENIZER_TYPES: dict[str, tuple[int, int | None]] = {
    "tokenizer.ggml.model": (STRING, None),
    "tokenizer.ggml.pre": (STRING, None),
    "tokenizer.ggml.tokens": (ARRAY, STRING),
    "tokenizer.ggml.token_type": (ARRAY, I32),
    "tokenizer.ggml.merges": (ARRAY, STRING),
    "tokenizer.ggml.add_bos_token": (BOOL, None),
    "tokenizer.chat_template": (STRING, None),
}


def config_metadata(cfg: ModelConfig) -> list[tuple[str, Any, int, int | None]]:
    """The `general.*` and `llama.*` GGUF keys for `cfg`, typed as llama.cpp writes them
    (docs/llama-reference.md §5.2). llama3 RoPE scaling has no keys: it travels as the rope_freqs tensor."""
    a = cfg.architecture
    items: list[tuple[str, Any, int, int | None]] = [
        ("general.architecture", a, STRING, None),
        ("general.name", cfg.name, STRING, None),
        (f"{a}.context_length", cfg.context_length, U32, None),
        (f"{a}.embedding_length", cfg.dim, U32, None),
        (f"{a}.block_count", cfg.n_layers, U32, None),
        (f"{a}.feed_forward_length", cfg.ffn_dim, U32, None),
        (f"{a}.attention.head_count", cfg.n_heads, U32, None),
        (f"{a}.attention.head_count_kv", cfg.n_kv_heads, U32, None),
        (f"{a}.rope.freq_base", cfg.rope_theta, F32, None),
        (f"{a}.attention.layer_norm_rms_epsilon", cfg.norm_eps, F32, None),
        (f"{a}.vocab_size", cfg.vocab_size, U32, None),
        (f"{a}.rope.dimension_count", cfg.head_dim, U32, None),
        (f"{a}.attention.key_length", cfg.head_dim, U32, None),
        (f"{a}.attention.value_length", cfg.head_dim, U32, None),
    ]
    if cfg.rope_scaling is not None and cfg.rope_scaling.kind == "linear":
        items += [
            (f"{a}.rope.scaling.type", "linear", STRING, None),
            (f"{a}.rope.scaling.factor", cfg.rope_scaling.factor, F32, None),
        ]
    return items


def llama3_rope_divisors(cfg: ModelConfig) -> np.ndarray:
    """Per-pair divisors of the base frequencies for llama3 RoPE scaling, float32 (hd/2,): what
    llama.cpp's convert_hf_to_gguf.py writes as `rope_freqs.weight` (docs/llama-reference.md §2.5)."""
    s, hd = cfg.rope_scaling, cfg.head_dim
    assert s is not None and s.kind == "llama3"
    base = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    low_wavelen = s.original_context_length / s.low_freq_factor
    high_wavelen = s.original_context_length / s.high_freq_factor
    out = []
    for freq in base:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(s.factor)
        else:
            smooth = (s.original_context_length / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            out.append(1 / ((1 - smooth) / s.factor + smooth))
    return np.array(out, dtype=np.float32)


_GGUF_NAME = {c: g for g, c in _GLOBAL_NAMES.items()}
_GGUF_LAYER = {c: g for g, c in _LAYER_NAMES.items()}
_GGML_OF = {torch.float32: GGMLType.F32, torch.float16: GGMLType.F16, torch.bfloat16: GGMLType.BF16}


def gguf_name(name: str) -> str:
    """The GGUF tensor name of canonical `name` (inverse of gguf.canonical_name)."""
    if name in _GGUF_NAME:
        return _GGUF_NAME[name]
    _, layer, rest = name.split(".", 2)
    return f"blk.{layer}.{_GGUF_LAYER[rest.removesuffix('.weight')]}.weight"


class FloatCheckpointSource:
    """An HF or Meta folder as a GGUF `TensorSource` (weights/gguf_writer.py), the way llama.cpp's
    convert_hf_to_gguf.py lays it out: Q/K rows interleaved, norms in F32, matrices in their
    stored float type, llama3 RoPE scaling as a `rope_freqs` tensor, the folder's tokenizer as
    `tokenizer.ggml.*` keys."""

    architecture = "llama"

    def __init__(self, ckpt: FloatCheckpoint) -> None:
        self.ckpt = ckpt
        self.path = ckpt.path
        self.file_size = ckpt.file_size
        cfg = ckpt.config
        shapes = _expected_shapes(cfg)
        missing = [n for n in shapes if ckpt.shapes.get(n) != shapes[n]]
        if missing:
            raise ModelFileError(
                f"{ckpt.path}: '{missing[0]}' is missing or has shape "
                f"{ckpt.shapes.get(missing[0])}, expected {shapes[missing[0]]}"
            )
        self._infos: list[tuple[str, tuple[int, ...], GGMLType]] = [
            (gguf_name(n), s, GGMLType.F32 if len(s) == 1 else _GGML_OF[ckpt.dtypes[n]]) for n, s in shapes.items()
        ]
        if cfg.rope_scaling is not None and cfg.rope_scaling.kind == "llama3":
            self._infos.append(("rope_freqs.weight", (cfg.head_dim // 2,), GGMLType.F32))
        self._tokenizer: dict[str, Any] | None = None

    def metadata_items(self) -> Iterator[tuple[str, Any, int, int | None]]:
        yield from config_metadata(self.ckpt.config)
        if self._tokenizer is None:
            self._tokenizer = self.ckpt.tokenizer_metadata()
        for key, value in self._tokenizer.items():
            vtype, element = _TOKENIZER_TYPES.get(key, (U32, None))  # the *_token_id keys
            yield key, value, vtype, element

    def tensor_infos(self) -> list[tuple[str, tuple[int, ...], GGMLType]]:
        return list(self._infos)

    def _tensor(self, name: str) -> torch.Tensor:
        """Tensor `name` (GGUF) in GGUF layout and its declared type."""
        cfg = self.ckpt.config
        if name == "rope_freqs.weight":
            return torch.from_numpy(llama3_rope_divisors(cfg))
        canonical = canonical_name(name)
        assert canonical is not None, name
        t = self.ckpt.tensor(canonical)
        if t.dim() == 1:
            return t.float()
        if canonical.endswith("q_proj.weight"):
            t = rotate_half_to_interleaved(t, cfg.n_heads)
        elif canonical.endswith("k_proj.weight"):
            t = rotate_half_to_interleaved(t, cfg.n_kv_heads)
        return t.contiguous()

    def raw(self, name: str) -> np.ndarray:
        return self._tensor(name).reshape(-1).view(torch.uint8).numpy()

    def float32(self, name: str) -> torch.Tensor:
        return self._tensor(name).float()
