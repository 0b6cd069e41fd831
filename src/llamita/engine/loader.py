"""Find a model (GGUF file, Hugging Face folder or Meta folder), read it, and build the model
and tokenizer that run it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llamita.config import GenerationDefaults, ModelConfig
from llamita.errors import InvalidParameterError, ModelFileError
from llamita.kernels import native
from llamita.library.catalog import default_model_path
from llamita.library.local import resolve_model, resolve_model_settings
from llamita.library.settings import ModelSettings
from llamita.model.offload import offload_layers
from llamita.model.tensor_parallel import parallelize
from llamita.model.transformer import Transformer
from llamita.tokenizer import Tokenizer
from llamita.weights.checkpoint import checkpoint_format, read_checkpoint
from llamita.weights.gguf_reader import GGUFFile
from llamita.weights.malloc import large_frees_returned

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise InvalidParameterError("device", str(e)) from None
    if resolved.type == "cuda":
        # Checked here, as one line, not 60 lines deep inside the first tensor moved there.
        if torch.version.cuda is None:
            raise InvalidParameterError(
                "device",
                f"{device!r} needs a CUDA build of torch; this one "
                f"({torch.__version__}) runs on the CPU only: use --device cpu",
            )
        if not torch.cuda.is_available():
            raise InvalidParameterError(
                "device",
                f"{device!r}: no CUDA GPU is visible (driver missing, "
                "or CUDA_VISIBLE_DEVICES hides them): use --device cpu",
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InvalidParameterError(
                "device", f"{device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0"
            )
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 where the hardware has fast bf16 matmuls (CUDA, or a CPU with AVX-512
    BF16 / AMX), else float32. Weights are stored and matmuls run in this dtype; RMSNorm and
    softmax still accumulate in float32 and logits are returned in float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if _cpu_has_fast_bf16() else torch.float32
    if dtype not in DTYPES:
        raise InvalidParameterError("dtype", f"must be auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def _compact_runs(dt: torch.dtype, dev: torch.device) -> bool:
    """Compact weights run on the CPU in bfloat16 (torch's int4/int8 kernels or llamita's) and
    in float32 where llamita's kernels load (they take float32 activations as they are)."""
    return dev.type == "cpu" and (dt == torch.bfloat16 or (dt == torch.float32 and native.vnni_kernels()))


def _compact_by_default(requested: str | torch.dtype | None, dt: torch.dtype, dev: torch.device) -> bool:
    """bfloat16 on the CPU: compact. float32 chosen by `auto` (a CPU without fast bfloat16, e.g.
    AVX2 only): compact where llamita's kernels load, so the default reads the 4-bit blocks
    (~98 MB a token for the default model) instead of dense float32 (~540 MB). An explicit
    float32 stays dense: the exact reference the compact forms are measured against."""
    if dt == torch.bfloat16:
        return dev.type == "cpu"
    return requested in (None, "auto") and _compact_runs(dt, dev)


def kernel_summary() -> str:
    """One line for a user: the level of llamita's kernels this process runs (avx512_vnni,
    avx_vnni, avx2), or why none loads and torch's kernels run instead."""
    return native.kernel_summary()


def _cpu_has_fast_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & native.cpu_flags())


@dataclass
class LoadedModel:
    path: Path
    config: ModelConfig
    model: Transformer
    tokenizer: Tokenizer
    metadata: dict[str, Any]  # GGUF-style keys (for folders: the ones their GGUF would hold)
    dtype: torch.dtype
    device: torch.device
    load_seconds: float
    format: str = "gguf"  # "gguf", "hf" or "meta"
    generation: GenerationDefaults | None = None  # HF generation_config.json, when present
    library_name: str | None = None  # the library name it was asked by (llama3.2:1b), if any
    # A created model's settings (`llamita create`): default sampling parameters, system prompt,
    # messages, adapters; its TEMPLATE is already the tokenizer's chat template.
    settings: ModelSettings | None = None
    compact: bool = False  # quantized weights kept compact (load_model's `compact`, resolved)

    @property
    def display_name(self) -> str:
        """What a status line calls the model: the library name it was asked by, else its file
        or folder name (an Ollama blob is a `sha256-...` file: its tag says more)."""
        return self.library_name or self.path.name


def load_model(
    path: str | os.PathLike[str] | None = None,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = "auto",
    compact: bool | None = None,
    rope_scaling_factor: float | None = None,
    tensor_parallel: tuple[int, int] | None = None,
    gpu_layers: int | None = None,
) -> LoadedModel:
    """Load a model ready to run: a GGUF file, a Hugging Face folder (config.json + safetensors)
    or a Meta folder (params.json + consolidated.NN.pth), told apart automatically, or a library
    name that stands for one (`resolve_model_path`); None: the default model.

    compact: keep quantized GGUF weights small (int4 / per-row int8 / encoded embedding). None:
    on for bfloat16 on the CPU, and for the float32 that `dtype="auto"` picks on a CPU without
    fast bfloat16 where llamita's kernels load (`native.kernel_level()`, e.g. AVX2); an explicit
    float32 stays dense. False expands every weight to `dtype` (the reference against which the
    compact forms are measured). Float weights (F16/BF16 GGUF tensors, HF and Meta folders)
    always load dense in `dtype`.
    rope_scaling_factor: Meta folders only, the llama3 RoPE factor params.json does not state
    (default: 32 for tied-embedding models, i.e. Llama 3.2 1B/3B, else 8).
    tensor_parallel: (rank, world size): read only that rank's shard of the weights and build a
    model whose forward all-reduces with the other ranks (engine/tensor_parallel.py runs it).
    gpu_layers: on CUDA, keep only the first N blocks (and their KV cache) on the GPU and run
    the rest on the CPU (model/offload.py); None: the whole model on the device.
    """
    start = time.perf_counter()
    resolved, settings = _resolve(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if gpu_layers is not None and gpu_layers < 0:
        raise InvalidParameterError("gpu_layers", f"must be >= 0, got {gpu_layers}")
    if gpu_layers is not None and (dev.type != "cuda" or tensor_parallel is not None):
        raise InvalidParameterError(
            "gpu_layers",
            "splitting layers between GPU and CPU needs --device cuda and one process (no --tensor-parallel)",
        )
    if compact is None:
        compact = _compact_by_default(dtype, dt, dev)
    elif compact and not _compact_runs(dt, dev):
        raise InvalidParameterError(
            "compact",
            "compact weights need the CPU and dtype bfloat16, or "
            f"float32 with llamita's kernels ({native.vnni_kernels_skipped()})",
        )
    fmt = checkpoint_format(resolved)
    tokenizer = None
    if fmt != "gguf":  # read first: a missing tokenizer should not cost a full weight load
        tokenizer = load_tokenizer(resolved)
    rank, world = tensor_parallel or (0, 1)
    # Weights are converted and joined here: large temporaries go back to the system when freed.
    with large_frees_returned():
        ckpt = read_checkpoint(
            resolved, dtype=dt, compact=compact, rope_scaling_factor=rope_scaling_factor, tp_rank=rank, tp_size=world
        )
        if tokenizer is None:
            tokenizer = Tokenizer.from_gguf_metadata(ckpt.metadata)
        tokenizer = _with_template(tokenizer, settings)
        config = ckpt.config
        if tokenizer.vocab_size > config.vocab_size:
            raise ModelFileError(
                f"{resolved}: the vocabulary has {tokenizer.vocab_size} tokens but the "
                f"embedding only {config.vocab_size} rows"
            )
        metadata = {k: v for k, v in ckpt.metadata.items() if not k.startswith("tokenizer.ggml.")}
        if ckpt.shard is None:
            on_gpu = gpu_layers if gpu_layers is not None and gpu_layers < config.n_layers else None
            model = Transformer.from_state_dict(config, ckpt.take_state()).to("cpu" if on_gpu is not None else dev)
            if on_gpu is not None:
                offload_layers(model, on_gpu, dev)
        else:
            model = Transformer.from_state_dict(ckpt.shard.local_config(), ckpt.take_state()).to(dev)
            parallelize(model, ckpt.shard.vocab[0], ckpt.shard.vocab_sizes())
    by_name = None if path is None or Path(path).exists() else os.fspath(path)
    return LoadedModel(
        resolved,
        config,
        model,
        tokenizer,
        metadata,
        dt,
        dev,
        time.perf_counter() - start,
        fmt,
        ckpt.generation,
        by_name,
        settings=settings,
        compact=compact,
    )


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> Tokenizer:
    """The tokenizer of the model at `path` (None: the default model) without its weights: from
    a GGUF file's metadata (the tensor data behind the memory map is never read) or a folder's
    tokenizer files. The same Tokenizer `load_model` builds, for views that only tokenize."""
    resolved, settings = _resolve(path)
    if checkpoint_format(resolved) != "gguf":
        from llamita.tokenizer.files import tokenizer_from_folder

        return _with_template(tokenizer_from_folder(resolved), settings)
    gguf = GGUFFile(resolved)
    try:
        return _with_template(Tokenizer.from_gguf_metadata(gguf.metadata), settings)
    finally:
        gguf.close()


def _resolve(path: str | os.PathLike[str] | None) -> tuple[Path, ModelSettings | None]:
    """`resolve_model_path`, and a created model's settings (None for anything else)."""
    return resolve_model_settings(path) if path is not None else (default_model_path(), None)


def _with_template(tokenizer: Tokenizer, settings: ModelSettings | None) -> Tokenizer:
    """A created model's TEMPLATE replaces the chat template its weights came with."""
    if settings is None or settings.template is None:
        return tokenizer
    return tokenizer.with_chat_template(settings.template)


def resolve_model_path(path: str | os.PathLike[str] | None) -> Path:
    """What a model argument names, as a file or folder to open: None is the default model;
    a path is itself; a library name (`llama3.2:1b`, `hf.co/USER/REPO:Q4_K_M`, an Ollama tag,
    an alias from `llamita cp`) is where its weights lie. Never downloads: a known name not
    yet pulled is a ModelFileError that says to run `llamita pull NAME`."""
    return resolve_model(path) if path is not None else default_model_path()
