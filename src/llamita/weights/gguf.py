"""GGUF checkpoints of architecture `llama`: configuration and weights in canonical form.

Canonical form (shared with every other reader) is the Hugging Face layout with the `model.`
prefix dropped: `embed_tokens.weight`, `layers.N.self_attn.q_proj.weight`, ..., `norm.weight`,
`lm_head.weight`. GGUF stores Q/K rows in Meta's interleaved RoPE order; they are moved back to
the rotate-half order here, once, so the model has a single RoPE (docs/llama-reference.md §2.4).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch

from llamita.config import ModelConfig, RopeScaling
from llamita.errors import ModelFileError, UnsupportedModelError
from llamita.kernels import native
from llamita.kernels.compact import StateDict
from llamita.kernels.encoded_rows import EncodedRows, RowDecoder
from llamita.kernels.int4 import VNNI_BLOCK_ROWS, VNNI_LAYOUTS, Int4Weight, int4_supported, pack_ggml_q6k_blocks
from llamita.kernels.int8 import (
    K_MULTIPLE,
    Int8Weight,
    default_layout,
    int8_shape_ok,
    int8_supported,
    q8_0_blocks,
    quantize_int8,
)
from llamita.weights.gguf_reader import GGUFFile, GGUFTensorInfo
from llamita.weights.q4_pack import AFFINE_Q4_TYPES, pack_q4
from llamita.weights.quants import GGMLType, dequantize
from llamita.weights.shard import ShardAlignmentError, TensorShard, dequantize_columns, slice_gguf

SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF per-layer tensor name -> canonical name (docs/llama-reference.md §5.3).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
    "rope_freqs.weight": "rope_freqs",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


def canonical_name(gguf_name: str) -> str | None:
    """Canonical name of a GGUF tensor, or None for tensors the model does not use."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


def _require(meta: dict[str, Any], key: str, path: object) -> Any:
    if key not in meta:
        raise ModelFileError(f"{path}: GGUF metadata lacks '{key}'")
    return meta[key]


def _number(
    meta: dict[str, Any], key: str, path: object, kind: type[int] | type[float], default: float | None = None
) -> Any:
    """Metadata `key` as an int (kind=int) or a finite float (kind=float).

    A file from a stranger can hold a string, an array or NaN where a size belongs: refuse it
    here, naming the key, instead of letting `int()` fail somewhere deeper."""
    value = meta.get(key, default) if default is not None else _require(meta, key, path)
    allowed = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed) or (kind is float and not math.isfinite(value)):
        what = "an integer" if kind is int else "a finite number"
        raise ModelFileError(f"{path}: GGUF metadata '{key}' must be {what}, got {value!r:.60}")
    return kind(value)


def config_from_gguf(gguf: GGUFFile) -> ModelConfig:
    """Build the ModelConfig from GGUF metadata (nothing hard-coded: every size is read)."""
    meta = gguf.metadata
    arch = meta.get("general.architecture")
    if arch is None:
        raise ModelFileError(f"{gguf.path}: GGUF metadata lacks 'general.architecture'")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{gguf.path}: architecture '{arch!s:.60}' is not supported (llamita runs: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    def get(key: str, kind: type[int] | type[float] = int, default: float | None = None) -> Any:
        return _number(meta, f"{arch}.{key}", gguf.path, kind, default)

    dim = get("embedding_length")
    n_heads = get("attention.head_count")
    if isinstance(meta.get(f"{arch}.attention.head_count_kv"), list):
        raise UnsupportedModelError(f"{gguf.path}: per-layer KV head counts are not supported")
    n_kv_heads = get("attention.head_count_kv", default=n_heads)
    if n_heads <= 0:
        raise ModelFileError(
            f"{gguf.path}: GGUF metadata '{arch}.attention.head_count' must be positive, got {n_heads}"
        )
    head_dim = get("attention.key_length", default=dim // n_heads)
    rope_dim = get("rope.dimension_count", default=head_dim)
    if rope_dim != head_dim:
        raise UnsupportedModelError(
            f"{gguf.path}: partial rotary embeddings (rope dim {rope_dim} != head dim {head_dim}) are not supported"
        )
    if get("attention.value_length", default=head_dim) != head_dim:
        raise UnsupportedModelError(f"{gguf.path}: value head size differs from key head size")

    tokens = meta.get("tokenizer.ggml.tokens")
    embd = gguf.tensors.get("token_embd.weight")
    if embd is None:
        raise ModelFileError(f"{gguf.path}: GGUF file has no 'token_embd.weight' tensor")
    vocab_size = get("vocab_size", default=len(tokens) if isinstance(tokens, list) and tokens else embd.shape[0])

    scaling = None
    scaling_type = meta.get(f"{arch}.rope.scaling.type", "none")
    factor = get("rope.scaling.factor", float, 1.0)
    if scaling_type == "linear" and factor != 1.0:
        scaling = RopeScaling("linear", factor)
    elif scaling_type not in ("none", "linear"):
        raise UnsupportedModelError(f"{gguf.path}: RoPE scaling '{scaling_type!s:.60}' is not supported")
    # llama3-type scaling arrives as the `rope_freqs` tensor of divisors, not as metadata.

    try:
        cfg = ModelConfig(
            n_layers=get("block_count"),
            dim=dim,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            ffn_dim=get("feed_forward_length"),
            vocab_size=vocab_size,
            head_dim=head_dim,
            norm_eps=get("attention.layer_norm_rms_epsilon", float, 1e-5),
            rope_theta=get("rope.freq_base", float, 10000.0),
            rope_scaling=scaling,
            context_length=get("context_length", default=4096),
            tie_word_embeddings="output.weight" not in gguf.tensors,
            architecture=arch,
            name=str(meta.get("general.name", "")),
        )
    except ValueError as e:
        raise ModelFileError(f"{gguf.path}: inconsistent model metadata: {e}") from e
    # Every layer needs its tensors: a huge block_count is corruption, refused before anything
    # loops (or allocates) per layer.
    if cfg.n_layers * len(_LAYER_NAMES) > len(gguf.tensors):
        raise ModelFileError(
            f"{gguf.path}: GGUF metadata declares {cfg.n_layers} layers but the file "
            f"holds only {len(gguf.tensors)} tensors ({len(_LAYER_NAMES)} per layer)"
        )
    return cfg


def _unpermute_rows(raw: np.ndarray, n_rows: int, n_heads: int) -> np.ndarray:
    """Interleaved (GGUF/Meta) Q/K rows -> rotate-half (HF) rows, on raw bytes.

    Within each head, row 2i+c moves to row c*(hd/2)+i. Rows are whole (quantized) blocks, so
    this works for every GGML type without dequantizing.
    """
    row_bytes = raw.size // n_rows
    head_dim = n_rows // n_heads
    x = raw.reshape(n_heads, head_dim // 2, 2, row_bytes)
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(-1)


def _as_tensor(raw: np.ndarray) -> torch.Tensor:
    """Zero-copy uint8 tensor over (possibly read-only) mapped bytes.

    torch warns that it cannot protect read-only memory; the bytes are only ever read.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(raw)


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    hd = cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "embed_tokens.weight": (cfg.vocab_size, cfg.dim),
        "norm.weight": (cfg.dim,),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, cfg.dim)
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (cfg.dim,),
                p + "self_attn.q_proj.weight": (cfg.n_heads * hd, cfg.dim),
                p + "self_attn.k_proj.weight": (cfg.n_kv_heads * hd, cfg.dim),
                p + "self_attn.v_proj.weight": (cfg.n_kv_heads * hd, cfg.dim),
                p + "self_attn.o_proj.weight": (cfg.dim, cfg.n_heads * hd),
                p + "post_attention_layernorm.weight": (cfg.dim,),
                p + "mlp.gate_proj.weight": (cfg.ffn_dim, cfg.dim),
                p + "mlp.up_proj.weight": (cfg.ffn_dim, cfg.dim),
                p + "mlp.down_proj.weight": (cfg.dim, cfg.ffn_dim),
            }
        )
    return shapes


_FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


def _row_decoder(ggml_type: int, dim: int) -> RowDecoder:
    def decode(rows: torch.Tensor) -> torch.Tensor:
        return dequantize(rows.reshape(-1), ggml_type, (rows.shape[0], dim))

    return decode


def _int8(
    tensor: torch.Tensor,
    ggml_type: int,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    release: Callable[[int, int], None] | None = None,
) -> Int8Weight:
    """Re-quantize a GGML weight to int8 per row, decoding a slice of rows at a time; a Q8_0
    weight instead keeps its own blocks where a kernel level takes them (layout "vnni_q8b").

    release(start, stop): told the byte range of `tensor` each slice came from once it is
    decoded, so a weight read from the file map gives its pages back as it goes (the output
    projection is the largest tensor and comes last: holding its file pages whole beside its
    int8 copy made the load's peak)."""
    n, k = shape
    rows = tensor.view(n, -1)
    row_bytes = rows.shape[1]

    def raw(r0: int, r1: int) -> torch.Tensor:
        out = rows[r0:r1].clone()
        if release is not None:
            release(r0 * row_bytes, r1 * row_bytes)
        return out

    if ggml_type == GGMLType.Q8_0 and default_layout(n, dtype) == "vnni" and k % K_MULTIPLE == 0:
        return q8_0_blocks(n, k, raw)  # its own blocks, exact (kernels/int8.py)

    def decode(r0: int, r1: int) -> torch.Tensor:
        out = dequantize(rows[r0:r1].reshape(-1), ggml_type, (r1 - r0, k))
        if release is not None:
            release(r0 * row_bytes, r1 * row_bytes)
        return out

    return quantize_int8(n, k, decode, dtype)


# Bytes of a file's tensor packed per step when its pages can be given back as it goes: above
# glibc's largest mmap threshold (32 MiB), so each slice's temporaries go back to the system when
# freed instead of staying in the heap; tensors under 4 slices are packed whole (their pages cost
# less than the slices' copies).
PACK_SLICE_BYTES = 64 << 20


def _pack(raw: torch.Tensor, ggml_type: int, n: int, k: int) -> Int4Weight:
    """n rows of a GGML Q4_0/Q4_1/Q4_K/Q6_K weight's raw bytes in their own blocks."""
    return pack_ggml_q6k_blocks(raw, n, k) if ggml_type == GGMLType.Q6_K else pack_q4(raw, ggml_type, (n, k))


def _pack_by_rows(
    tensor: torch.Tensor, ggml_type: int, shape: tuple[int, ...], release: Callable[[int, int], None] | None
) -> Int4Weight:
    """`_pack` over the whole weight, or, when its bytes come straight from the file map
    (`release`), over slices of whole 16-row blocks written into one weight, each slice's file
    pages given back once packed: the output projection (the largest tensor, last in the file)
    then never holds its file pages and its packed copy whole at once, which was the load's
    peak. Exact: the VNNI layouts pack every 16-row block on its own (as `concat_int4` relies
    on); another layout is packed whole."""
    n, k = shape
    rows = tensor.view(n, -1)
    row_bytes = rows.shape[1]
    step = max(VNNI_BLOCK_ROWS, PACK_SLICE_BYTES // row_bytes // VNNI_BLOCK_ROWS * VNNI_BLOCK_ROWS)
    if release is None or n * row_bytes < 4 * PACK_SLICE_BYTES or n % VNNI_BLOCK_ROWS:
        return _pack(tensor, ggml_type, n, k)
    first = _pack(rows[:step].reshape(-1), ggml_type, step, k)
    if first.layout not in VNNI_LAYOUTS:
        return _pack(tensor, ggml_type, n, k)
    codes = torch.empty((n, *first.packed.shape[1:]), dtype=first.packed.dtype)
    meta = torch.empty((n // VNNI_BLOCK_ROWS, *first.scales_and_zeros.shape[1:]), dtype=first.scales_and_zeros.dtype)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        part = first if r0 == 0 else _pack(rows[r0:r1].reshape(-1), ggml_type, r1 - r0, k)
        codes[r0:r1] = part.packed
        meta[r0 // VNNI_BLOCK_ROWS : r1 // VNNI_BLOCK_ROWS] = part.scales_and_zeros
        release(r0 * row_bytes, r1 * row_bytes)
    return Int4Weight(codes, meta, n, k, first.group_size, first.layout)


def _released_after_use(gguf: GGUFFile) -> Iterator[tuple[str, GGUFTensorInfo]]:
    """Every (name, info) of the file; a tensor's file pages are released (`GGUFFile.release`)
    when the loop asks for the next one, so the peak resident memory of a load is the converted
    weights plus one tensor of the file, not the whole file beside them."""
    for gname, info in gguf.tensors.items():
        yield gname, info
        gguf.release(gname)


def gguf_state_dict(
    gguf: GGUFFile,
    cfg: ModelConfig,
    dtype: torch.dtype = torch.float32,
    compact: bool = False,
    shard: TensorShard | None = None,
) -> StateDict:
    """Every model tensor under its canonical name, checking names and shapes.

    Tensors are dequantized to `dtype` unless `compact` (CPU; engine/loader.py): then quantized
    weights stay small. Q4_0/Q4_1/Q4_K linear weights come as `Int4Weight` (exact but for
    bfloat16 scales), Q6_K ones where llamita's kernels load as `Int4Weight` of layout
    "vnni_q6k" (its own 6-bit codes and scales, exact), Q8_0 ones there as `Int8Weight` of
    layout "vnni_q8b" (its own blocks, exact), other quantized linear weights as
    per-row `Int8Weight`, and a quantized
    token embedding as `EncodedRows` (its file bytes, decoded per lookup) — or, for tied
    embeddings, as the `Int8Weight` the output projection needs anyway.
    `rope_freqs` (llama3 RoPE divisors), when present, is returned in float32.
    With `shard`, only that tensor-parallel rank's slice of each weight is read and converted;
    a quantized column slice that cuts through blocks is decoded to `dtype` instead.
    """
    expected = _expected_shapes(cfg)
    use_int4 = compact and int4_supported()
    use_int8 = compact and int8_supported()
    use_q6k = compact and native.vnni_kernels()
    state: StateDict = {}
    for gname, info in _released_after_use(gguf):
        name = canonical_name(gname)
        if name is None:
            continue
        if name in expected and tuple(info.shape) != expected[name]:
            raise ModelFileError(f"{gguf.path}: tensor '{gname}' has shape {info.shape}, expected {expected[name]}")
        raw = gguf.tensor_bytes(gname)
        shape = tuple(info.shape)
        split = shard.split(name) if shard is not None else None
        if split is not None:
            try:
                raw, shape = slice_gguf(raw, info.ggml_type, shape, split)
            except ShardAlignmentError:
                state[name] = dequantize_columns(_as_tensor(raw), info.ggml_type, shape, split[1], split[2], dtype)
                continue
        # A weight read straight from the map can give its pages back slice by slice.
        release = partial(gguf.release, gname) if split is None else None
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            raw = _unpermute_rows(raw, shape[0], shape[0] // cfg.head_dim)
            release = None
        tensor = _as_tensor(raw)
        quantized = info.ggml_type not in _FLOAT_TYPES
        is_linear = name.endswith("proj.weight") or name == "lm_head.weight"
        is_embedding = name == "embed_tokens.weight"
        tied_head = is_embedding and cfg.tie_word_embeddings
        if compact and quantized and (is_linear or is_embedding):
            own_blocks = (use_int4 and info.ggml_type in AFFINE_Q4_TYPES) or (
                use_q6k and info.ggml_type == GGMLType.Q6_K
            )
            if (is_linear or tied_head) and own_blocks:
                try:
                    state["lm_head.weight" if tied_head else name] = _pack_by_rows(
                        tensor, info.ggml_type, shape, release
                    )
                    if is_linear:
                        continue
                except ValueError:
                    pass  # a shape the kernel does not take
            if tied_head and "lm_head.weight" not in state and use_int8 and int8_shape_ok(*shape):
                state[name] = _int8(tensor, info.ggml_type, shape, dtype, release)
                continue
            if is_embedding:
                # Own copy of the bytes: the model must not depend on the file staying unchanged.
                rows = tensor.reshape(shape[0], -1).clone()
                state[name] = EncodedRows(rows, shape[1], _row_decoder(info.ggml_type, shape[1]))
                continue
            if use_int8 and int8_shape_ok(*shape):
                state[name] = _int8(tensor, info.ggml_type, shape, dtype, release)
                continue
        want = torch.float32 if name == "rope_freqs" else dtype
        state[name] = dequantize(tensor, info.ggml_type, shape, dtype=want)

    for name in expected:
        if name not in state:
            raise ModelFileError(f"{gguf.path}: GGUF file lacks the tensor for '{name}'")
    freqs = state.get("rope_freqs")
    if isinstance(freqs, torch.Tensor) and tuple(freqs.shape) != (cfg.head_dim // 2,):
        raise ModelFileError(f"{gguf.path}: rope_freqs has shape {tuple(freqs.shape)}, expected ({cfg.head_dim // 2},)")
    return state


def open_gguf(path: str | os.PathLike[str]) -> tuple[GGUFFile, ModelConfig]:
    """Open a GGUF model file and read its configuration (weights stay on disk)."""
    gguf = GGUFFile(path)
    try:
        return gguf, config_from_gguf(gguf)
    except BaseException:
        gguf.close()
        raise
