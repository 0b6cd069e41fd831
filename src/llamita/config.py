"""Frozen configuration objects shared by every layer.

`ModelConfig` describes one Llama-architecture network; readers in `llamita.weights` build it
from a file's metadata (GGUF keys, HF config.json, Meta params.json). `PRESETS` holds the
published Llama 3.1 / 3.2 shapes. Nothing here imports the rest of the package.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 ("llama3") or linear RoPE frequency scaling (docs/llama-reference.md §2.5)."""

    kind: str  # "llama3" or "linear"
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context_length: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a decoder-only Llama transformer."""

    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    head_dim: int = 0  # 0: dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    context_length: int = 4096
    tie_word_embeddings: bool = False
    architecture: str = "llama"
    name: str = ""

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        for field in (
            "n_layers",
            "dim",
            "n_heads",
            "n_kv_heads",
            "ffn_dim",
            "vocab_size",
            "head_dim",
            "context_length",
        ):
            if getattr(self, field) <= 0:
                raise ValueError(f"ModelConfig.{field} must be positive, got {getattr(self, field)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if not (math.isfinite(self.norm_eps) and self.norm_eps > 0):
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def n_params(self) -> int:
        """Number of weights, counting a tied embedding once."""
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        ffn = 3 * self.dim * self.ffn_dim
        per_layer = attn + ffn + 2 * self.dim
        embed = self.vocab_size * self.dim * (1 if self.tie_word_embeddings else 2)
        return self.n_layers * per_layer + embed + self.dim


def llama_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """SwiGLU hidden size from Meta's params.json fields (docs/llama-reference.md §1).

    int(2/3 of 4*dim), times the multiplier (truncated), rounded up to `multiple_of`:
    4096, 1024, 1.3 -> 14336 (Llama 3.1 8B).
    """
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling defaults a checkpoint ships (Hugging Face `generation_config.json`).

    None where the file does not say. `eos_token_ids` are every id that ends a reply (instruct
    Llama 3.1: 128001, 128008, 128009).
    """

    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None


def _llama3_preset(
    name: str, n_layers: int, dim: int, n_heads: int, ffn_dim: int, rope_factor: float, tied: bool
) -> ModelConfig:
    return ModelConfig(
        n_layers=n_layers,
        dim=dim,
        n_heads=n_heads,
        n_kv_heads=8,
        ffn_dim=ffn_dim,
        vocab_size=128256,
        norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=RopeScaling("llama3", rope_factor, 1.0, 4.0, 8192),
        context_length=131072,
        tie_word_embeddings=tied,
        name=name,
    )


# The published shapes (docs/llama-reference.md §1; Meta's params.json and the HF config.json of each model).
# head_dim = dim / n_heads in all five (64 for 3.2 1B). Llama 3.2 ties the output projection to
# the embedding and scales RoPE by 32, Llama 3.1 by 8.
PRESETS: dict[str, ModelConfig] = {
    "llama-3.1-8b": _llama3_preset("Llama 3.1 8B", 32, 4096, 32, 14336, 8.0, False),
    "llama-3.1-70b": _llama3_preset("Llama 3.1 70B", 80, 8192, 64, 28672, 8.0, False),
    "llama-3.1-405b": _llama3_preset("Llama 3.1 405B", 126, 16384, 128, 53248, 8.0, False),
    "llama-3.2-1b": _llama3_preset("Llama 3.2 1B", 16, 2048, 32, 8192, 32.0, True),
    "llama-3.2-3b": _llama3_preset("Llama 3.2 3B", 28, 3072, 24, 8192, 32.0, True),
}


@dataclass(frozen=True)
class ServerConfig:
    """How `llamita serve` runs (cli/serve.py builds it, serving/server.py uses it).

    kv_cache_tokens: token positions of KV cache shared by all running requests; None: the
    engine's default (1 GiB, at most context_length x max_running).
    max_queue: most requests waiting for a place in the batch; more are refused with 503.
    request_timeout: seconds a request may be queued and running in all; past it, it is aborted
    with a 504 (in a stream: an error event). None: no limit.
    """

    model: str | None = None  # a path or a library name; None: the embedded default model
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8080
    api_key: str | None = None
    max_queue: int = 64
    request_timeout: float | None = None
    kv_cache_tokens: int | None = None
    max_running: int = 16
    dtype: str = "auto"
    device: str = "auto"
    model_name: str | None = None  # the name clients use; None: the model file's name
    data_dir: str | None = None  # the web chat's llamita.db; None: the per-user data folder
    lora: tuple[str, ...] = ()  # LoRA adapters, `[NAME=]PATH[:SCALE]`; requests pick one by name
    gpu_layers: int | None = None  # CUDA: only the first N blocks on the GPU; None: all
    tensor_parallel: int = 1  # ranks under torchrun; rank 0 serves
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none: no CORS
    threads: int | None = None  # CPU threads; None: engine/threads.py's default for this machine
    strict_model_names: bool = False  # True: a `model` other than the served name is a 404
    library: bool = True  # requests may name any local model (loaded on demand)
    max_memory: int | None = None  # bytes all loaded models may take; None: 80% of what is free
    keep_alive: str | None = None  # Ollama duration ("5m", "-1"); None: $OLLAMA_KEEP_ALIVE or 5m
    max_loaded_models: int = 3  # models loaded at once, the default one included (Ollama's CPU default)
    compile: bool | None = None  # decode steps compiled: None background build, True now, False eager


def default_data_dir() -> Path:
    """The per-user data folder (the chat store's llamita.db, document collections):
    $XDG_DATA_HOME/llamita, else ~/.local/share/llamita."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "llamita"
