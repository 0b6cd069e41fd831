"""How much disk and RAM a Llama model needs at each quantization and context length.

Computed from shapes, not measured: the file size is the sum over tensors of the bytes of the
type the quantization mix gives each (the same rules `llamita quantize` writes), and the RAM is
what llamita keeps resident for each tensor on the CPU in bfloat16 (see `weights/gguf.py`):

* Q4_0 / Q4_1 linear weights: packed int4, 4 bits + a bfloat16 scale and zero per 32 weights
  (5 bits a weight); Q4_K: packed int4 in its own scales (layout "vnni_k"), 4 bits + a byte of
  scale and of min per 32 + an f16 d and dmin per 256 (4.625 bits) where llamita's VNNI kernel
  runs (AVX-512 VNNI; elsewhere 5 bits, as Q4_0);
* Q6_K linear weights (rows a multiple of 16, columns of 256): its own 6-bit codes and scales
  (layout "vnni_q6k"), 6.5625 bits a weight, as in the file;
* Q8_0 linear weights (rows a multiple of 16): its own int8 codes and f16 scales (layout
  "vnni_q8b"), 8.5 bits a weight, as in the file;
* other quantized linear weights: int8 per row, 8 bits + one bfloat16 scale per row;
* a quantized token embedding: its file bytes (decoded per lookup); tied, the int8 table the
  output projection needs (a Q8_0 one in its own blocks: the file's size);
* F32 / F16 / BF16 weights: bfloat16 (2 bytes); norms and rope_freqs as stored;
* the KV cache: 2 (K and V) x layers x KV heads x head_dim x context x 2 bytes (bfloat16);
* activations of one prefill chunk (the peak of a step: attention scores, the FFN's hidden
  layer, one weight expanded to bfloat16 for the dense prefill matmul);
* fixed overhead: the runtime (Python, torch and their kernels: RUNTIME_BYTES, measured) and
  the tokenizer (TOKENIZER_BYTES_PER_TOKEN per vocabulary entry, measured).
`benchmarks/memory.py` measures the real resident size against this.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from llamita.config import PRESETS, ModelConfig
from llamita.weights.quant_mix import FileType, ModelShape, file_type, tensor_type
from llamita.weights.quants import GGMLType, tensor_nbytes

# Llama 3.1 shapes (the presets of docs/llama-reference.md §1), for estimates without a file at hand.
LLAMA_3_1: dict[str, ModelConfig] = {size: PRESETS[f"llama-3.1-{size.lower()}"] for size in ("8B", "70B", "405B")}
_Q4 = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K)
_FLOAT = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


def gguf_tensors(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, torch-order shape) of every tensor a llama GGUF file of `cfg` holds."""
    d, hd = cfg.dim, cfg.head_dim
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (cfg.vocab_size, d))]
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", (d,)),
            (p + "attn_q.weight", (cfg.n_heads * hd, d)),
            (p + "attn_k.weight", (cfg.n_kv_heads * hd, d)),
            (p + "attn_v.weight", (cfg.n_kv_heads * hd, d)),
            (p + "attn_output.weight", (d, cfg.n_heads * hd)),
            (p + "ffn_norm.weight", (d,)),
            (p + "ffn_gate.weight", (cfg.ffn_dim, d)),
            (p + "ffn_up.weight", (cfg.ffn_dim, d)),
            (p + "ffn_down.weight", (d, cfg.ffn_dim)),
        ]
    out.append(("output_norm.weight", (d,)))
    if not cfg.tie_word_embeddings:
        out.append(("output.weight", (cfg.vocab_size, d)))
    if cfg.rope_scaling is not None and cfg.rope_scaling.kind == "llama3":
        out.append(("rope_freqs.weight", (hd // 2,)))
    return out


def _resident_bytes(name: str, shape: tuple[int, ...], t: GGMLType, tied: bool) -> int:
    n = math.prod(shape)
    if len(shape) < 2:
        return tensor_nbytes(t, n)
    if t in _FLOAT:
        return 2 * n
    rows, cols = shape
    int8 = n + 2 * rows
    q6k = t == GGMLType.Q6_K and rows % 16 == 0 and cols % 256 == 0  # its own blocks, repacked
    q8b = t == GGMLType.Q8_0 and rows % 16 == 0 and cols % 32 == 0  # its own blocks, one table
    if name == "token_embd.weight":
        if tied:  # the lookup reads the file's bytes; the output projection its packed weight
            if q6k:
                return 2 * tensor_nbytes(t, n)
            if q8b:  # the lookup reads the packed table itself
                return tensor_nbytes(t, n)
            return int8 if t not in _Q4 else tensor_nbytes(t, n) + n // 2 + n // 32 * 4
        return tensor_nbytes(t, n)
    if q6k or q8b:
        return tensor_nbytes(t, n)
    if t == GGMLType.Q4_K and rows % 16 == 0:
        return n // 2 + n // 32 * 2 + n // 256 * 4
    if t in _Q4:
        return n // 2 + n // 32 * 4
    return int8


@dataclass(frozen=True)
class MemoryEstimate:
    file_type: str
    n_params: int
    file_bytes: int  # the GGUF tensors (metadata adds a few MB: the vocabulary)
    weight_bytes: int  # resident weights in llamita on the CPU (bfloat16 compute)
    kv_bytes_per_token: int  # bfloat16 K and V of every layer

    def kv_cache_bytes(self, context: int) -> int:
        return self.kv_bytes_per_token * context

    def total_bytes(self, context: int) -> int:
        """Weights plus a KV cache for `context` tokens (activations are small beside them)."""
        return self.weight_bytes + self.kv_cache_bytes(context)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.file_bytes / self.n_params


def estimate(cfg: ModelConfig, type_name: str | FileType) -> MemoryEstimate:
    """File size and llamita's resident memory for `cfg` quantized as `type_name`."""
    ft = type_name if isinstance(type_name, FileType) else file_type(type_name)
    shape = ModelShape(cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.tie_word_embeddings)
    file_b = resident = params = 0
    for name, dims in gguf_tensors(cfg):
        t = tensor_type(name, dims, ft, shape, GGMLType.F32)
        n = math.prod(dims)
        params += n
        file_b += tensor_nbytes(t, n)
        resident += _resident_bytes(name, dims, t, cfg.tie_word_embeddings)
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2
    return MemoryEstimate(ft.name, params, file_b, resident, kv)


def estimate_file(path: str | os.PathLike[str]) -> tuple[ModelConfig, MemoryEstimate]:
    """The same estimate for a real GGUF file, from the types its tensors actually have."""
    from llamita.weights.gguf import open_gguf

    gguf, cfg = open_gguf(path)
    try:
        file_b = resident = params = 0
        types: Counter[str] = Counter()
        for info in gguf.tensors.values():
            t = GGMLType(info.ggml_type)
            params += math.prod(info.shape)
            file_b += info.nbytes
            resident += _resident_bytes(info.name, info.shape, t, cfg.tie_word_embeddings)
            types[t.name] += info.nbytes
        label = types.most_common(1)[0][0] if types else "?"  # the type holding most bytes
    finally:
        gguf.close()
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2
    return cfg, MemoryEstimate(label, params, file_b, resident, kv)


# Measured with benchmarks/memory.py on x86-64 Linux, torch 2.13 CPU: resident memory of a
# process that imported torch and llamita and ran each kernel once (before any model). It was
# 340 MB while building the model on the meta device ran meta ops (importing torch's reference
# implementations, ~70 MB); the model is now built without them.
RUNTIME_BYTES = 270 * 10**6
# The tokenizer (Hugging Face `tokenizers` BPE with its merges): 23 MB for SmolLM2's 49,152
# tokens, measured.
TOKENIZER_BYTES_PER_TOKEN = 470
PREFILL_CHUNK = 512  # the engine's max_prefill_tokens (engine/llm_engine.py)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes a generating process holds, by part."""

    weights: int
    kv_cache: int
    activations: int
    tokenizer: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.tokenizer + self.runtime


def breakdown(
    cfg: ModelConfig, est: MemoryEstimate, context: int, batch: int = 1, kv_bytes_per_element: float = 2.0
) -> MemoryBreakdown:
    """What llamita holds while generating `batch` sequences of up to `context` tokens each.
    kv_bytes_per_element: 2 for llamita's bfloat16 cache (4 with --dtype float32); 34/32 gives
    llama.cpp's q8_0 cache, for comparison."""
    kv = int(est.kv_bytes_per_token / 2 * kv_bytes_per_element) * context * batch
    chunk = min(PREFILL_CHUNK, context)
    scores = cfg.n_heads * chunk * context * 4  # float32 attention scores of one chunk
    hidden = chunk * (cfg.dim * 4 + cfg.ffn_dim * 3) * 2  # residual, q/k/v/o, gate/up/act (bf16)
    # One FFN weight expanded to bfloat16 for a dense prefill matmul (the output projection
    # only ever sees the last position, so it stays compact).
    expanded = cfg.ffn_dim * cfg.dim * 2
    logits = batch * cfg.vocab_size * 4
    return MemoryBreakdown(
        est.weight_bytes,
        kv,
        scores + hidden + expanded + logits,
        cfg.vocab_size * TOKENIZER_BYTES_PER_TOKEN,
        RUNTIME_BYTES,
    )


def served_bytes(
    path: Path, *, kv_cache_tokens: int | None = None, max_running: int = 16, kv_bytes_per_element: int = 2
) -> int:
    """Estimated resident bytes of the model at `path` (a GGUF file or a Hugging Face folder)
    served by `llamita serve`: its weights, the KV cache the engine allocates for it
    (LLMEngine's default: 1 GiB, at most context x max_running; or kv_cache_tokens) and its
    tokenizer. The runtime (RUNTIME_BYTES) is paid once per process and is not counted.
    kv_bytes_per_element: 2 for a bfloat16 cache, 4 for float32."""
    from llamita.engine.llm_engine import DEFAULT_KV_MEMORY
    from llamita.weights.hf import config_from_hf

    if path.is_dir():
        cfg = config_from_hf(path)
        # A folder's safetensors load as they are stored (bfloat16 checkpoints: the same bytes).
        weights = sum(p.stat().st_size for p in path.glob("*.safetensors"))
        per_token = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * kv_bytes_per_element
    else:
        cfg, est = estimate_file(path)
        weights = est.weight_bytes
        per_token = est.kv_bytes_per_token // 2 * kv_bytes_per_element
    tokens = kv_cache_tokens
    if tokens is None:
        tokens = min(DEFAULT_KV_MEMORY // per_token, cfg.context_length * max_running)
    return weights + tokens * per_token + cfg.vocab_size * TOKENIZER_BYTES_PER_TOKEN
