"""Meta's original Llama checkpoints: params.json, consolidated.NN.pth model-parallel shards and
tokenizer.model (docs/llama-reference.md §7.2, §1, §3.3).

Each shard is opened with `torch.load(mmap=True)`, so weights stay on disk until a tensor is
asked for; then its slices are concatenated along the dimension the model-parallel layer split
(column-parallel wq/wk/wv/w1/w3/output on the output rows, row-parallel wo/w2 on the input
columns, the embedding on whichever its shape shows), Q/K rows are moved from Meta's interleaved
RoPE order to the rotate-half order the model uses, and the result is returned under its
canonical (Hugging Face) name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from llamita.config import GenerationDefaults, ModelConfig, RopeScaling, llama_ffn_dim
from llamita.errors import ModelFileError, UnsupportedModelError
from llamita.tokenizer.gguf_keys import gguf_keys_from_tiktoken
from llamita.weights.hf import read_json

PARAMS_FILE = "params.json"
TOKENIZER_FILE = "tokenizer.model"
_SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")

# Meta per-layer name -> (canonical name, dimension the shards split: 0 rows, 1 columns, None
# replicated).
_LAYER_NAMES = {
    "attention.wq": ("self_attn.q_proj", 0),
    "attention.wk": ("self_attn.k_proj", 0),
    "attention.wv": ("self_attn.v_proj", 0),
    "attention.wo": ("self_attn.o_proj", 1),
    "feed_forward.w1": ("mlp.gate_proj", 0),
    "feed_forward.w2": ("mlp.down_proj", 1),
    "feed_forward.w3": ("mlp.up_proj", 0),
    "attention_norm": ("input_layernorm", None),
    "ffn_norm": ("post_attention_layernorm", None),
}
_GLOBAL_NAMES = {
    "tok_embeddings.weight": ("embed_tokens.weight", -1),  # -1: decided by shape
    "norm.weight": ("norm.weight", None),
    "output.weight": ("lm_head.weight", 0),
}
_LAYER_RE = re.compile(r"^layers\.(\d+)\.([a-z_.0-9]+)\.weight$")

# Llama 3.2 1B/3B are the only Llama 3.x text models with a tied output projection, and the only
# ones whose llama3 RoPE factor is 32 (Llama 3.1: 8). params.json only says `use_scaled_rope`.
LLAMA31_ROPE_FACTOR = 8.0
LLAMA32_ROPE_FACTOR = 32.0


def interleaved_to_rotate_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Q/K rows from Meta/GGUF interleaved order to Hugging Face rotate-half order.

    Within each head, row 2i+c moves to row c*(hd/2)+i (docs/llama-reference.md §2.4). w: (n_heads*hd, in).
    """
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def rotate_half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `interleaved_to_rotate_half` (llama.cpp's LlamaModel.permute)."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _canonical(meta_name: str) -> tuple[str, int | None] | None:
    if meta_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[meta_name]
    m = _LAYER_RE.match(meta_name)
    if m and m.group(2) in _LAYER_NAMES:
        name, split = _LAYER_NAMES[m.group(2)]
        return f"layers.{m.group(1)}.{name}.weight", split
    return None  # e.g. Llama 2's `rope.freqs`: recomputed, not read


def config_from_params(
    params: dict[str, Any],
    *,
    vocab_size: int,
    tied: bool,
    rope_scaling_factor: float | None = None,
    path: Path | str = PARAMS_FILE,
    name: str = "",
) -> ModelConfig:
    """ModelConfig from Meta's params.json.

    The FFN size is derived (docs/llama-reference.md §1). With `use_scaled_rope`, the llama3 factor is
    `rope_scaling_factor` if given, else params.json's own `rope_scaling_factor` if it has one,
    else 32 for a tied model (Llama 3.2 1B/3B) and 8 otherwise (Llama 3.1); the context length
    is then 131072. Without it: 8192 for rope_theta 500000 (Llama 3), else 4096 (Llama 2).
    """
    try:
        dim, n_heads = int(params["dim"]), int(params["n_heads"])
        theta = float(params.get("rope_theta", 10000.0))
        scaling = None
        if params.get("use_scaled_rope"):
            factor = (
                rope_scaling_factor
                or params.get("rope_scaling_factor")
                or (LLAMA32_ROPE_FACTOR if tied else LLAMA31_ROPE_FACTOR)
            )
            scaling = RopeScaling("llama3", float(factor), 1.0, 4.0, 8192)
            context = 131072
        else:
            context = 8192 if theta >= 500000 else 4096
        return ModelConfig(
            n_layers=int(params["n_layers"]),
            dim=dim,
            n_heads=n_heads,
            n_kv_heads=int(params.get("n_kv_heads") or n_heads),
            ffn_dim=llama_ffn_dim(dim, int(params.get("multiple_of", 256)), params.get("ffn_dim_multiplier")),
            vocab_size=vocab_size,
            norm_eps=float(params.get("norm_eps", 1e-5)),
            rope_theta=theta,
            rope_scaling=scaling,
            context_length=context,
            tie_word_embeddings=tied,
            name=name,
        )
    except KeyError as e:
        raise ModelFileError(f"{path}: lacks {e}") from None
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: inconsistent model parameters: {e}") from None


def shard_files(folder: Path) -> list[Path]:
    """consolidated.00.pth, .01, ... in order; ModelFileError if none or one is missing."""
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := _SHARD_RE.match(p.name))}
    if not found:
        raise ModelFileError(f"{folder}: no consolidated.NN.pth weight files")
    for i in range(max(found) + 1):
        if i not in found:
            raise ModelFileError(
                f"{folder / f'consolidated.{i:02d}.pth'}: model-parallel shard {i} of {max(found) + 1} is missing"
            )
    return [found[i] for i in sorted(found)]


class MetaCheckpoint:
    """A Meta Llama folder, shards memory-mapped, merged one tensor at a time."""

    format = "meta"
    generation: GenerationDefaults | None = None  # Meta folders ship no sampling defaults

    def __init__(self, folder: str | os.PathLike[str], rope_scaling_factor: float | None = None) -> None:
        self.path = Path(folder)
        params = read_json(self.path / PARAMS_FILE)
        params = params.get("model", params)
        if "vision_chunk_size" in params or "moe_args" in params:
            raise UnsupportedModelError(
                f"{self.path / PARAMS_FILE}: a vision or MoE model; llamita runs Llama text models"
            )
        files = shard_files(self.path)
        self.file_size = sum(f.stat().st_size for f in files)
        self._files = files
        self._shards = [self._load(f) for f in files]
        self._group: int | None = -1  # which tensors' pages the open mappings may hold
        for file, shard in zip(files[1:], self._shards[1:]):
            if shard.keys() != self._shards[0].keys():
                raise ModelFileError(f"{file}: holds other tensors than {files[0].name}")
        self._where: dict[str, tuple[str, int | None]] = {}
        for meta_name in self._shards[0]:
            mapped = _canonical(meta_name)
            if mapped is not None:
                self._where[mapped[0]] = (meta_name, mapped[1])
        for name in ("embed_tokens.weight", "norm.weight"):
            if name not in self._where:
                raise ModelFileError(f"{files[0]}: lacks the tensor for '{name}'")

        dim = int(params.get("dim", 0))
        self._embed_split = self._embedding_split(dim)
        embed_rows = (
            sum(s["tok_embeddings.weight"].shape[0] for s in self._shards)
            if self._embed_split == 0
            else self._shards[0]["tok_embeddings.weight"].shape[0]
        )
        vocab = int(params.get("vocab_size", -1))
        tied = self._output_is_embedding()
        if tied:
            self._where.pop("lm_head.weight", None)
        self.config = config_from_params(
            params,
            vocab_size=vocab if vocab > 0 else embed_rows,
            tied=tied,
            rope_scaling_factor=rope_scaling_factor,
            path=self.path / PARAMS_FILE,
            name=self.path.resolve().name,
        )
        self.shapes = {name: self._shape(name) for name in self._where}
        self.dtypes = {name: self._shards[0][meta].dtype for name, (meta, _) in self._where.items()}
        self._release()

    def _release(self) -> None:
        self._shards, self._group = [], None

    def _shards_for(self, name: str) -> list[dict[str, torch.Tensor]]:
        """The shards, mapped afresh for each layer: pages a mapping has touched stay resident
        until it is dropped, so one mapping for the whole load would end up holding the whole
        file next to the converted model (measured: peak RSS = model + file). Re-opening costs
        one small unpickling per shard and layer."""
        m = _LAYER_RE.match(name)
        group = int(m.group(1)) if m else -1
        if group != self._group:
            self._release()
            self._shards, self._group = [self._load(f) for f in self._files], group
        return self._shards

    def _load(self, file: Path) -> dict[str, torch.Tensor]:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises RuntimeError, pickle and zip errors alike
            raise ModelFileError(f"{file}: not a readable PyTorch checkpoint ({e})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelFileError(f"{file}: expected a dict of tensors")
        return state

    def _embedding_split(self, dim: int) -> int:
        """Llama 3 splits the embedding over vocabulary rows; Llama 1/2 over model columns."""
        parts = [s["tok_embeddings.weight"].shape for s in self._shards]
        if len(parts) == 1 or parts[0][1] == dim:
            return 0
        if sum(p[1] for p in parts) == dim:
            return 1
        raise ModelFileError(
            f"{self._files[0]}: tok_embeddings shards {parts} do not add up to dim {dim} on either axis"
        )

    def _output_is_embedding(self) -> bool:
        """Tied when there is no output projection, or it equals the embedding (checked on a
        few rows first, so an untied model costs no full read)."""
        if "lm_head.weight" not in self._where:
            return True
        out, emb = self._merged("lm_head.weight"), self._merged("embed_tokens.weight")
        if out.shape != emb.shape or not torch.equal(out[:8], emb[:8]):
            return False
        return torch.equal(out, emb)

    def _merged(self, name: str) -> torch.Tensor:
        meta_name, split = self._where[name]
        if name == "embed_tokens.weight":
            split = self._embed_split
        try:
            parts = [s[meta_name] for s in self._shards_for(name)]
        except KeyError:
            raise ModelFileError(f"{self.path}: a shard lacks '{meta_name}'") from None
        if split is None or len(parts) == 1:
            return parts[0]
        try:
            return torch.cat(parts, dim=split)
        except RuntimeError as e:
            raise ModelFileError(f"{self.path}: shards of '{meta_name}' do not fit together ({e})") from None

    def _shape(self, name: str) -> tuple[int, ...]:
        meta_name, split = self._where[name]
        if name == "embed_tokens.weight":
            split = self._embed_split
        shape = list(self._shards[0][meta_name].shape)
        if split is not None:
            shape[split] = sum(s[meta_name].shape[split] for s in self._shards)
        return tuple(shape)

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor `name` (canonical, rotate-half Q/K) as stored, in memory of its own."""
        try:
            t = self._merged(name)
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = self.config.n_heads if "q_proj" in name else self.config.n_kv_heads
                t = interleaved_to_rotate_half(t, heads)
            # A single shard's tensor (and a replicated one) is a view of the mapped file.
            if any(t.data_ptr() == s[self._where[name][0]].data_ptr() for s in self._shards_for(name)):
                t = t.clone()
            return t
        except RuntimeError as e:  # a truncated shard surfaces on first touch
            raise ModelFileError(f"{self.path}: cannot read '{name}' ({e})") from None

    def tensor_part(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Rows (dim 0) or columns (dim 1) [start, stop) of tensor `name` (canonical,
        rotate-half Q/K), touching only the shards that hold them. When the folder has one
        shard per tensor-parallel rank, a rank's slice is exactly its own shard's tensor.
        Q/K slices must hold whole heads (the RoPE row order is fixed per head)."""
        meta_name, split = self._where[name]
        if name == "embed_tokens.weight":
            split = self._embed_split
        try:
            parts = [s[meta_name] for s in self._shards_for(name)]
            if split is None or len(parts) == 1:
                pieces, along = [parts[0].narrow(dim, start, stop - start)], dim
            elif split == dim:  # the shards that overlap [start, stop), each trimmed to it
                pieces, along, offset = [], dim, 0
                for part in parts:
                    a, b = max(start, offset), min(stop, offset + part.shape[dim])
                    if a < b:
                        pieces.append(part.narrow(dim, a - offset, b - a))
                    offset += part.shape[dim]
            else:  # split the other way: cut each shard, then join them as the merge would
                pieces, along = [part.narrow(dim, start, stop - start) for part in parts], split
            t = torch.cat(pieces, dim=along)  # always a copy: never a view of the mapped file
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                t = interleaved_to_rotate_half(t, t.shape[0] // self.config.head_dim)
            return t
        except RuntimeError as e:  # a truncated shard surfaces on first touch
            raise ModelFileError(f"{self.path}: cannot read '{name}' ({e})") from None

    def tokenizer_metadata(self) -> dict[str, Any]:
        """The GGUF tokenizer keys for this folder's tokenizer.model (for `llamita quantize`)."""
        return gguf_keys_from_tiktoken(self.path / TOKENIZER_FILE, self.config.vocab_size)

    def close(self) -> None:
        self._release()

    def __enter__(self) -> MetaCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
