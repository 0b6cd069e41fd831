"""LoRA adapter files: PEFT folders (adapter_config.json + adapter_model.safetensors) and
llama.cpp's GGUF adapters (general.type = adapter, adapter.type = lora), read into one form.

Canonical form: module name as the model names it ("layers.0.self_attn.q_proj") -> A (r, in),
B (out, r) in float32 and the adapter's own scale (PEFT: lora_alpha / r, or lora_alpha / √r
with use_rslora; GGUF: adapter.lora.alpha / r, 1 when alpha is 0, as llama.cpp does). GGUF
adapters carry B's rows of q/k in the interleaved RoPE order, like the base weights of a GGUF
file (convert_lora_to_gguf.py permutes them); they are moved back to rotate-half order here.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llamita.config import ModelConfig
from llamita.errors import ModelFileError, UnsupportedModelError
from llamita.weights.gguf import _as_tensor, _expected_shapes, _unpermute_rows, canonical_name
from llamita.weights.gguf_reader import GGUFFile
from llamita.weights.quants import dequantize

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_WEIGHTS_BIN = "adapter_model.bin"
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PEFT_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?(layers\.\d+\.(?:self_attn|mlp)\.([a-z_]+))"
    r"\.lora_([AB])(?:\.default)?\.weight$"
)


@dataclass(frozen=True)
class LoraLayer:
    """One adapted linear layer: its update is scale · B A, a (out, in) matrix of rank r."""

    a: torch.Tensor  # (r, in), float32
    b: torch.Tensor  # (out, r), float32
    scale: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    def delta_weight(self) -> torch.Tensor:
        """scale · B A: what merging adds to the base weight, (out, in) float32."""
        return self.scale * (self.b @ self.a)


@dataclass
class LoraAdapter:
    name: str
    path: Path
    format: str  # "peft" or "gguf"
    layers: dict[str, LoraLayer]
    alpha: float
    rank: int  # the configured rank (layers may differ with PEFT's rank_pattern)
    metadata: dict[str, Any] = field(default_factory=dict)  # adapter_config.json, or GGUF keys


def adapter_name(path: str | os.PathLike[str]) -> str:
    """Default name of an adapter: its folder or file name without .gguf / .safetensors."""
    p = Path(path)
    if p.name in (PEFT_CONFIG, PEFT_WEIGHTS, PEFT_WEIGHTS_BIN):
        p = p.parent
    return p.name.removesuffix(".gguf").removesuffix(".safetensors") or "adapter"


def read_lora(path: str | os.PathLike[str], cfg: ModelConfig, name: str | None = None) -> LoraAdapter:
    """Read a PEFT adapter folder (or its adapter_config.json) or a GGUF LoRA file, checking
    every layer against the base model's `cfg`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(f"LoRA adapter not found: {p}")
    if p.is_file() and p.name in (PEFT_CONFIG, PEFT_WEIGHTS, PEFT_WEIGHTS_BIN):
        p = p.parent
    if p.is_dir():
        adapter = _read_peft(p, name or adapter_name(p))
    else:
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ModelFileError(
                f"{p}: not a LoRA adapter (expected a PEFT folder with {PEFT_CONFIG} or a GGUF LoRA file)"
            )
        adapter = _read_gguf(p, cfg, name or adapter_name(p))
    _check_shapes(adapter, cfg)
    return adapter


# -- PEFT ---------------------------------------------------------------------------------
def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the
    module's full name ("model.layers.0.self_attn.q_proj")."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _read_peft(folder: Path, name: str) -> LoraAdapter:
    cfg_path = folder / PEFT_CONFIG
    if not cfg_path.is_file():
        raise ModelFileError(f"{folder}: no {PEFT_CONFIG} (not a PEFT adapter folder)")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{cfg_path}: not readable JSON ({e})") from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise UnsupportedModelError(f"{folder}: peft_type {config.get('peft_type')!r}; llamita reads LORA adapters")
    if config.get("use_dora"):
        raise UnsupportedModelError(f"{folder}: DoRA adapters (use_dora) are not supported")
    if config.get("modules_to_save"):
        raise UnsupportedModelError(
            f"{folder}: modules_to_save {config['modules_to_save']} would replace "
            "whole base layers; llamita applies low-rank updates only"
        )
    try:
        r, alpha = int(config["r"]), float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise ModelFileError(f"{cfg_path}: needs numeric 'r' and 'lora_alpha'") from None
    rslora = bool(config.get("use_rslora", False))
    tensors = _peft_tensors(folder)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _PEFT_KEY.match(key)
        if m is None or m.group(2) not in TARGET_MODULES:
            raise UnsupportedModelError(
                f"{folder}: tensor '{key}' is not a LoRA A/B of {', '.join(TARGET_MODULES)} "
                "(embedding, lm_head, bias and DoRA tensors are not supported)"
            )
        parts.setdefault(m.group(1), {})[m.group(3)] = t
    layers = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise ModelFileError(f"{folder}: '{module}' has lora_{''.join(ab)} but not both A and B")
        rank = ab["A"].shape[0]
        full = "model." + module
        layer_alpha = float(_pattern_value(config.get("alpha_pattern") or {}, full, alpha))
        scale = layer_alpha / (math.sqrt(rank) if rslora else rank)
        layers[module] = LoraLayer(ab["A"].float().contiguous(), ab["B"].float().contiguous(), scale)
    if not layers:
        raise ModelFileError(f"{folder}: the adapter holds no LoRA tensors")
    return LoraAdapter(name, folder, "peft", layers, alpha, r, config)


def _peft_tensors(folder: Path) -> dict[str, torch.Tensor]:
    st, binary = folder / PEFT_WEIGHTS, folder / PEFT_WEIGHTS_BIN
    if st.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise ModelFileError(f"{st}: not a readable safetensors file ({e})") from None
    if binary.is_file():
        try:
            state: dict[str, torch.Tensor] = torch.load(binary, map_location="cpu", weights_only=True)
            return state
        except Exception as e:
            raise ModelFileError(f"{binary}: not a readable PyTorch file ({e})") from None
    raise ModelFileError(f"{folder}: no {PEFT_WEIGHTS} (or {PEFT_WEIGHTS_BIN})")


# -- GGUF ---------------------------------------------------------------------------------
def _read_gguf(path: Path, cfg: ModelConfig, name: str) -> LoraAdapter:
    with GGUFFile(path) as gguf:
        meta = gguf.metadata
        if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
            raise ModelFileError(
                f"{path}: not a GGUF LoRA adapter (general.type="
                f"{meta.get('general.type')!r}, adapter.type={meta.get('adapter.type')!r})"
            )
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise UnsupportedModelError(f"{path}: adapter for architecture {arch!r}; llamita runs llama")
        alpha = float(meta.get("adapter.lora.alpha", 0.0))
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for gname, info in gguf.tensors.items():
            base, _, half = gname.rpartition(".")
            canon = canonical_name(base)
            if half not in ("lora_a", "lora_b") or canon is None or not canon.endswith("proj.weight"):
                raise UnsupportedModelError(
                    f"{path}: tensor '{gname}' is not a LoRA A/B of an attention or MLP projection"
                )
            raw = gguf.tensor_bytes(gname)
            module = canon.removesuffix(".weight")
            if half == "lora_b" and module.endswith(("q_proj", "k_proj")):
                heads = cfg.n_heads if module.endswith("q_proj") else cfg.n_kv_heads
                if info.shape[0] % (2 * heads):
                    raise ModelFileError(
                        f"{path}: '{gname}' has {info.shape[0]} rows, not a multiple of 2 x {heads} heads"
                    )
                raw = _unpermute_rows(raw, info.shape[0], heads)
            tensor = dequantize(_as_tensor(raw), info.ggml_type, info.shape, dtype=torch.float32)
            parts.setdefault(module, {})[half] = tensor
        layers = {}
        for module, ab in sorted(parts.items()):
            if set(ab) != {"lora_a", "lora_b"}:
                raise ModelFileError(f"{path}: '{module}' lacks its {'lora_b' if 'lora_a' in ab else 'lora_a'}")
            rank = ab["lora_b"].shape[1]
            layers[module] = LoraLayer(ab["lora_a"], ab["lora_b"], alpha / rank if alpha else 1.0)
        if not layers:
            raise ModelFileError(f"{path}: the adapter holds no LoRA tensors")
        ranks = {layer.rank for layer in layers.values()}
        metadata = {k: v for k, v in meta.items() if k.startswith(("general.", "adapter."))}
        return LoraAdapter(name, path, "gguf", layers, alpha, max(ranks), metadata)


def _check_shapes(adapter: LoraAdapter, cfg: ModelConfig) -> None:
    expected = _expected_shapes(cfg)
    for module, layer in adapter.layers.items():
        shape = expected.get(module + ".weight")
        if shape is None:
            raise ModelFileError(f"{adapter.path}: adapter layer '{module}' but the model has {cfg.n_layers} layers")
        out, inp = shape
        if (
            layer.a.ndim != 2
            or layer.b.ndim != 2
            or layer.a.shape[0] != layer.b.shape[1]
            or layer.a.shape[1] != inp
            or layer.b.shape[0] != out
        ):
            raise ModelFileError(
                f"{adapter.path}: '{module}' has A {tuple(layer.a.shape)} and B {tuple(layer.b.shape)}, "
                f"expected A (r, {inp}) and B ({out}, r): the adapter was made for another base model"
            )


# -- writing (llamita finetune) -----------------------------------------------------------
def write_peft(
    folder: str | os.PathLike[str],
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]],
    r: int,
    alpha: float,
    base_model: str = "",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save A (r, in) / B (out, r) per canonical module as a PEFT LoRA folder that
    `PeftModel.from_pretrained` loads onto the transformers model of the same base."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (a, b) in layers.items():
        prefix = f"base_model.model.model.{module}"
        tensors[prefix + ".lora_A.weight"] = a.detach().float().cpu().contiguous()
        tensors[prefix + ".lora_B.weight"] = b.detach().float().cpu().contiguous()
    targets = sorted({m.rpartition(".")[2] for m in layers})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "base_model_name_or_path": base_model,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        **(extra or {}),
    }
    tmp = out / (PEFT_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / PEFT_WEIGHTS)
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out
