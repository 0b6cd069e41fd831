"""Which GGML type each tensor gets when a model is quantized to a named file type.

The names users know (Q4_K_M, Q5_K_M, ...) are not one block format but a mix: llama.cpp's
`llama_tensor_get_type` (src/llama-quant.cpp) gives the tensors that hurt quality most when
squeezed (the output projection, V, some ffn_down layers) more bits. We follow its rules for the
llama architecture without MoE (docs/llama-reference.md §6.3) so a file we write has the same tensor types as
one from `llama-quantize`, and so its size and quality can be compared one to one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llamita.errors import InvalidParameterError
from llamita.weights.quants import BLOCK_SIZES, GGMLType


@dataclass(frozen=True)
class FileType:
    """A `--type` choice: its name, llama.cpp's `general.file_type` id and its base block format."""

    name: str
    file_type: int  # LLAMA_FTYPE_* as written to general.file_type
    base: GGMLType
    description: str

    @property
    def is_quantized(self) -> bool:
        return self.base not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


FILE_TYPES: dict[str, FileType] = {
    ft.name: ft
    for ft in (
        FileType("F32", 0, GGMLType.F32, "32-bit float, no loss"),
        FileType("F16", 1, GGMLType.F16, "16-bit IEEE half"),
        FileType("BF16", 32, GGMLType.BF16, "16-bit bfloat"),
        FileType("Q8_0", 7, GGMLType.Q8_0, "8-bit, blocks of 32 with one scale"),
        FileType("Q4_0", 2, GGMLType.Q4_0, "4-bit, blocks of 32, scale only"),
        FileType("Q4_1", 3, GGMLType.Q4_1, "4-bit, blocks of 32, scale and minimum"),
        FileType("Q5_0", 8, GGMLType.Q5_0, "5-bit, blocks of 32, scale only"),
        FileType("Q5_1", 9, GGMLType.Q5_1, "5-bit, blocks of 32, scale and minimum"),
        FileType("Q2_K", 10, GGMLType.Q2_K, "2-bit K-quant mix (V, ffn_down, attn_output get 3-4 bits)"),
        FileType("Q3_K_M", 12, GGMLType.Q3_K, "3-bit K-quant mix, medium"),
        FileType("Q4_K_M", 15, GGMLType.Q4_K, "4-bit K-quant mix, medium (the usual choice)"),
        FileType("Q5_K_M", 17, GGMLType.Q5_K, "5-bit K-quant mix, medium"),
        FileType("Q6_K", 18, GGMLType.Q6_K, "6-bit K-quant"),
    )
}

# general.file_type -> llama.cpp's name for the mix (docs/llama-reference.md §5.1).
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}

# A K-quant needs rows of 256; when a row is shorter llama.cpp falls back to a 32-block type.
_FALLBACK = {
    GGMLType.Q2_K: GGMLType.Q4_0,
    GGMLType.Q3_K: GGMLType.Q4_0,
    GGMLType.Q4_K: GGMLType.Q5_0,
    GGMLType.Q5_K: GGMLType.Q5_1,
    GGMLType.Q6_K: GGMLType.Q8_0,
}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def file_type(name: str) -> FileType:
    """The FileType called `name` (case-insensitive), or InvalidParameterError listing the choices."""
    ft = FILE_TYPES.get(name.upper())
    if ft is None:
        raise InvalidParameterError(
            "type", f"unknown quantization type {name!r}; choose one of {', '.join(FILE_TYPES)}"
        )
    return ft


def is_quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Matrices named *weight are quantized; norms, 1-D tensors (rope_freqs) keep their type."""
    return len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name


def use_more_bits(layer: int, n_layers: int) -> bool:
    """The layers llama.cpp's _M mixes give extra bits: first and last eighth, every third between."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


@dataclass(frozen=True)
class ModelShape:
    """The few hyperparameters the rules look at."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    tied_embeddings: bool  # no output.weight: token_embd doubles as the output projection

    @property
    def n_gqa(self) -> int:
        return self.n_heads // max(1, self.n_kv_heads)

    @property
    def is_70b(self) -> bool:
        # llama.cpp calls an 80-layer llama with grouped KV heads "70B" and treats V specially.
        return self.n_layers == 80 and self.n_kv_heads != self.n_heads


def _mix_type(name: str, ft: FileType, model: ModelShape, row: int) -> GGMLType:
    base = ft.base
    layer_match = _LAYER.match(name)
    layer = int(layer_match.group(1)) if layer_match else -1
    n = model.n_layers

    if name == "output.weight" or (model.tied_embeddings and name == "token_embd.weight"):
        # The output projection decides every token's probability: never below 6 bits.
        if row % BLOCK_SIZES[base][0]:
            return GGMLType.Q8_0
        return base if base == GGMLType.Q8_0 else GGMLType.Q6_K
    if name.endswith("attn_v.weight"):
        t = base
        if ft.name == "Q2_K":
            t = GGMLType.Q4_K if model.n_gqa >= 4 else GGMLType.Q3_K
        elif ft.name == "Q3_K_M":
            t = GGMLType.Q5_K if layer < 2 else GGMLType.Q4_K
        elif ft.name in ("Q4_K_M", "Q5_K_M") and use_more_bits(layer, n):
            t = GGMLType.Q6_K
        if model.is_70b and t in (GGMLType.Q3_K, GGMLType.Q4_K):
            # 8 query heads share each V head there, so V is small and worth more bits.
            t = GGMLType.Q5_K
        return t
    if name.endswith("ffn_down.weight"):
        if ft.name == "Q2_K":
            return GGMLType.Q3_K
        if ft.name == "Q3_K_M":
            return GGMLType.Q5_K if layer < n // 16 else GGMLType.Q4_K
        if ft.name in ("Q4_K_M", "Q5_K_M") and use_more_bits(layer, n):
            return GGMLType.Q6_K
        return base
    if name.endswith("attn_output.weight"):
        if ft.name == "Q2_K":
            return GGMLType.Q3_K
        if ft.name == "Q3_K_M":
            return GGMLType.Q4_K
    return base


def tensor_type(name: str, shape: tuple[int, ...], ft: FileType, model: ModelShape, source_type: GGMLType) -> GGMLType:
    """The type tensor `name` (GGUF name, torch-order `shape`) gets in a file of type `ft`.

    Tensors that are not quantized keep `source_type`. A type whose block does not divide the
    row length falls back as in llama.cpp (K-quant -> 32-block type -> F16).
    """
    if not is_quantizable(name, shape):
        return source_type
    row = shape[-1]
    t = _mix_type(name, ft, model, row) if ft.is_quantized else ft.base
    if row % BLOCK_SIZES[t][0]:
        t = _FALLBACK.get(t, t)
        if row % BLOCK_SIZES[t][0]:
            t = GGMLType.F16
    return t
