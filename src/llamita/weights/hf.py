"""Hugging Face Llama folders: config.json and safetensors weights (one file or sharded); the
GGUF tokenizer keys of their tokenizer files come from tokenizer/gguf_keys.py.

Weights stay on disk until asked for: `tensor(name)` memory-maps the tensor's file with
`safe_open`, copies that one tensor into memory the caller owns and drops the mapping, so a loader
that converts one tensor at a time peaks at the final model plus one tensor (measured: a 1.2 GB
bf16 folder loads in bfloat16 with peak RSS = final RSS, i.e. the file's pages never pile up).
Names are returned in canonical form (HF names without the `model.` prefix); HF already stores
Q/K rows in the rotate-half order the model uses, so nothing is permuted here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from llamita.config import GenerationDefaults, ModelConfig, RopeScaling
from llamita.errors import ModelFileError, UnsupportedModelError
from llamita.tokenizer.gguf_keys import gguf_keys_from_hf

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_FILE = "generation_config.json"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file's content, or ModelFileError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _rope_scaling(cfg: dict[str, Any], path: Path) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from either transformers 4's `rope_theta` + `rope_scaling` or
    transformers 5's `rope_parameters` (which holds rope_theta too)."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    try:
        factor = float(params["factor"])
        if kind == "linear":
            return theta, RopeScaling("linear", factor)
        if kind == "llama3":
            original = params.get("original_max_position_embeddings", 8192)
            return theta, RopeScaling(
                "llama3",
                factor,
                float(params.get("low_freq_factor", 1.0)),
                float(params.get("high_freq_factor", 4.0)),
                int(original),
            )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: incomplete rope scaling {params!r} ({e})") from None
    raise UnsupportedModelError(
        f"{path}: RoPE scaling '{kind}' is not supported (llamita runs llama3 and linear scaling)"
    )


def config_from_hf(folder: Path) -> ModelConfig:
    """ModelConfig from a Hugging Face `config.json` of a LlamaForCausalLM."""
    path = folder / CONFIG_FILE
    cfg = read_json(path)
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if model_type != "llama" or (archs and "LlamaForCausalLM" not in archs):
        raise UnsupportedModelError(
            f"{path}: model_type {model_type!r} / architectures {archs} is not a Llama causal LM "
            "(llamita runs model_type 'llama', LlamaForCausalLM)"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise UnsupportedModelError(f"{path}: {flag} is set; Llama layers have no biases")
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"{path}: hidden_act {cfg['hidden_act']!r} is not silu")

    def need(key: str) -> int:
        if key not in cfg:
            raise ModelFileError(f"{path}: lacks '{key}'")
        return int(cfg[key])

    dim, n_heads = need("hidden_size"), need("num_attention_heads")
    theta, scaling = _rope_scaling(cfg, path)
    try:
        return ModelConfig(
            n_layers=need("num_hidden_layers"),
            dim=dim,
            n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            ffn_dim=need("intermediate_size"),
            vocab_size=need("vocab_size"),
            head_dim=int(cfg.get("head_dim") or dim // n_heads),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            context_length=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            name=folder.resolve().name,
        )
    except ValueError as e:
        raise ModelFileError(f"{path}: inconsistent model config: {e}") from None


def generation_defaults(folder: Path) -> GenerationDefaults | None:
    """What `generation_config.json` says (None without one); EOS ids fall back to config.json."""
    path = folder / GENERATION_FILE
    if not path.exists():
        return None
    gen = read_json(path)
    eos = gen.get("eos_token_id")
    if eos is None:
        eos = read_json(folder / CONFIG_FILE).get("eos_token_id")
    eos_ids = tuple(int(i) for i in (eos if isinstance(eos, list) else [] if eos is None else [eos]))

    def opt(key: str, kind: type) -> Any:
        value = gen.get(key)
        return None if value is None else kind(value)

    return GenerationDefaults(
        eos_token_ids=eos_ids,
        bos_token_id=opt("bos_token_id", int),
        do_sample=opt("do_sample", bool),
        temperature=opt("temperature", float),
        top_p=opt("top_p", float),
        top_k=opt("top_k", int),
    )


def _safe_open(file: Path) -> Any:
    try:
        from safetensors import safe_open  # only needed for HF folders
    except ImportError:
        raise UnsupportedModelError(
            "reading Hugging Face folders needs the safetensors package: pip install safetensors"
        ) from None
    return safe_open(str(file), framework="pt")


def _canonical(hf_name: str) -> str:
    return hf_name.removeprefix("model.")


class HFCheckpoint:
    """A Hugging Face Llama folder, its weights memory-mapped and read one tensor at a time."""

    format = "hf"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder)
        self.config = config_from_hf(self.path)
        self.generation = generation_defaults(self.path)
        files = self._weight_files()
        self.file_size = sum(f.stat().st_size for f in files)
        self._where: dict[str, tuple[Path, str]] = {}  # canonical name -> (file, HF name)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for file in files:  # headers only: no tensor data is read here
            try:
                handle = _safe_open(file)
            except UnsupportedModelError:
                raise
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise ModelFileError(f"{file}: not a readable safetensors file ({e})") from None
            with handle:
                for hf_name in handle.keys():
                    part = handle.get_slice(hf_name)
                    if part.get_dtype() not in _TORCH_DTYPES:
                        raise UnsupportedModelError(
                            f"{file}: tensor '{hf_name}' has dtype {part.get_dtype()}; llamita "
                            "reads BF16, F16 and F32 safetensors"
                        )
                    name = _canonical(hf_name)
                    self._where[name] = (file, hf_name)
                    self.shapes[name] = tuple(part.get_shape())
                    self.dtypes[name] = _TORCH_DTYPES[part.get_dtype()]

    def _weight_files(self) -> list[Path]:
        index = self.path / INDEX_FILE
        if index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelFileError(f"{index}: lacks a 'weight_map'")
            files = [self.path / name for name in dict.fromkeys(weight_map.values())]
        elif (self.path / SINGLE_FILE).exists():
            files = [self.path / SINGLE_FILE]
        else:
            others = sorted(p.name for p in self.path.glob("*.bin")) + sorted(
                p.name for p in self.path.glob("*.safetensors")
            )
            hint = f" (found {', '.join(others[:3])}: only safetensors are read)" if others else ""
            raise ModelFileError(f"{self.path}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")
        for file in files:
            if not file.is_file():
                raise ModelFileError(f"{file}: weight shard listed in {INDEX_FILE} is missing")
        return files

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor `name` (canonical) as stored, in memory of its own (not the file's mapping)."""
        file, hf_name = self._where[name]
        try:
            # A fresh mapping per tensor: get_tensor returns a view of the mapped file, and the
            # pages it touched leave the process once the view and the handle are dropped.
            with _safe_open(file) as handle:
                tensor: torch.Tensor = handle.get_tensor(hf_name)
                return tensor.clone()
        except UnsupportedModelError:
            raise
        except Exception as e:
            raise ModelFileError(f"{file}: cannot read tensor '{hf_name}' ({e})") from None

    def tensor_part(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Rows (dim 0) or columns (dim 1) [start, stop) of tensor `name`, reading only those
        from the file (a tensor-parallel rank's slice), in memory of its own."""
        file, hf_name = self._where[name]
        try:
            with _safe_open(file) as handle:
                part = handle.get_slice(hf_name)
                rows: torch.Tensor = part[start:stop] if dim == 0 else part[:, start:stop]
                return rows.clone()
        except UnsupportedModelError:
            raise
        except Exception as e:
            raise ModelFileError(f"{file}: cannot read tensor '{hf_name}' ({e})") from None

    def tokenizer_metadata(self) -> dict[str, Any]:
        """The GGUF tokenizer keys for this folder's tokenizer.json (for `llamita quantize`)."""
        return gguf_keys_from_hf(self.path, self.config.vocab_size)

    def close(self) -> None:
        pass  # every read opens and releases its own mapping

    def __enter__(self) -> HFCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
