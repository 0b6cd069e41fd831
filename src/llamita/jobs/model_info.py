"""A description of a model for `llamita info`, read from metadata only (no weights): a GGUF
file's header, or a Hugging Face / Meta folder's config and tokenizer files."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from llamita.config import ModelConfig
from llamita.engine.loader import resolve_model_path
from llamita.weights.checkpoint import checkpoint_format, open_float_checkpoint
from llamita.weights.gguf import open_gguf
from llamita.weights.quant_mix import FILE_TYPE_NAMES as FILE_TYPES


def model_info(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Architecture, sizes, quantization, tokenizer and chat template of a GGUF file or a model
    folder (the same fields; a folder's `gguf_version` is None and its `format` "hf"/"meta")."""
    resolved = resolve_model_path(path)
    if checkpoint_format(resolved) != "gguf":
        return _folder_info(resolved)
    gguf, cfg = open_gguf(resolved)
    try:
        meta = gguf.metadata
        types = Counter(info.type_name for info in gguf.tensors.values())
        file_type = meta.get("general.file_type")
        if not isinstance(file_type, int):
            file_type = None
        return {
            "path": str(resolved),
            "format": "gguf",
            "file_size_bytes": gguf.file_size,
            "gguf_version": gguf.version,
            "name": meta.get("general.name", ""),
            "size_label": meta.get("general.size_label", ""),
            "quantization": FILE_TYPES.get(file_type, f"file_type {file_type}") if file_type is not None else "unknown",
            "tensor_types": dict(types.most_common()),
            **_config_and_tokenizer(cfg, meta),
            # Llama 3's RoPE frequencies stored as a tensor, not as config keys.
            **({"rope_scaling": "llama3 (rope_freqs)"} if "rope_freqs.weight" in gguf.tensors else {}),
        }
    finally:
        gguf.close()


def _folder_info(folder: Path) -> dict[str, Any]:
    """`model_info` of an HF or Meta folder: its config, its tensors' stored types, and the
    tokenizer keys its GGUF would hold (tokenizer/gguf_keys.py, as `llamita quantize` writes)."""
    ckpt = open_float_checkpoint(folder)
    try:
        # torch.bfloat16 -> BF16, torch.float16 -> F16, torch.float32 -> F32: GGML's type names.
        types = Counter(str(t).removeprefix("torch.").upper().replace("FLOAT", "F") for t in ckpt.dtypes.values())
        return {
            "path": str(folder),
            "format": ckpt.format,
            "file_size_bytes": ckpt.file_size,
            "gguf_version": None,
            "name": folder.name,
            "size_label": "",
            "quantization": ", ".join(types) or "unknown",
            "tensor_types": dict(types.most_common()),
            **_config_and_tokenizer(ckpt.config, ckpt.tokenizer_metadata()),
        }
    finally:
        ckpt.close()


def _config_and_tokenizer(cfg: ModelConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """The fields every format states alike: the architecture from the config, the tokenizer and
    chat template from GGUF-style `tokenizer.*` keys (a file's own, or those a folder's GGUF
    would hold)."""
    tokens = meta.get("tokenizer.ggml.tokens")
    tokens = tokens if isinstance(tokens, list) else []  # any value type can sit under a key
    return {
        "architecture": cfg.architecture,
        "parameters": cfg.n_params(),
        "context_length": cfg.context_length,
        "n_layers": cfg.n_layers,
        "dim": cfg.dim,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "ffn_dim": cfg.ffn_dim,
        "vocab_size": cfg.vocab_size,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling.kind if cfg.rope_scaling else "none",
        "norm_eps": cfg.norm_eps,
        "tied_embeddings": cfg.tie_word_embeddings,
        "tokenizer": {
            "model": meta.get("tokenizer.ggml.model", ""),
            "pre": meta.get("tokenizer.ggml.pre", ""),
            "tokens": len(tokens),
            "bos": _token(tokens, meta.get("tokenizer.ggml.bos_token_id")),
            "eos": _token(tokens, meta.get("tokenizer.ggml.eos_token_id")),
            "add_bos": meta.get("tokenizer.ggml.add_bos_token"),
        },
        "chat_template": meta.get("tokenizer.chat_template"),
    }


def _token(tokens: list[str], idx: Any) -> str | None:
    if isinstance(idx, int) and 0 <= idx < len(tokens):
        return f"{tokens[idx]} ({idx})"
    return None
