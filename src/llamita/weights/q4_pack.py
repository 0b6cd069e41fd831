"""GGUF 4-bit weights (Q4_0, Q4_1, Q4_K) straight into a packed int4 CPU format.

The bridge between a file format (`quants.q4_affine_rows`) and a kernel layout
(`kernels.int4.pack_int4`): the codes move over unchanged, only each group's scale and zero
are rounded to bfloat16. No dense copy of the weight is ever made.
"""

from __future__ import annotations

import torch

from llamita.kernels import native
from llamita.kernels.int4 import (
    VNNI_BLOCK_ROWS,
    Int4Weight,
    default_layout,
    pack_ggml_blocks,
    pack_ggml_k_blocks,
    pack_int4,
    pack_int4_k,
)
from llamita.weights.quants import AFFINE_Q4_TYPES, GGMLType, q4_affine_rows, q4_k_rows


def pack_q4(
    raw: torch.Tensor, ggml_type: GGMLType | int, shape: tuple[int, ...], layout: str | None = None
) -> Int4Weight:
    """Pack a Q4_0 / Q4_1 / Q4_K weight of `shape` (out, in) from its raw GGUF bytes, for the
    int4 kernel `layout` ("vnni", "vnni_k" (Q4_K only) or "torch"; None: the fastest available
    here, which for Q4_K is "vnni_k": Q4_K's own scales, 4.625 bits a weight, not 5).

    Raises ValueError when the weight cannot take the int4 path (another type, a shape the
    kernel does not take, no kernel on this CPU): the caller keeps it dense instead.
    """
    rows = q4_affine_rows(raw, ggml_type, shape)  # also checks the type, shape and byte count
    n, k = int(shape[0]), int(shape[1])
    t = GGMLType(int(ggml_type))
    if layout == "vnni_k" or (
        layout is None and t == GGMLType.Q4_K and default_layout() == "vnni" and n % VNNI_BLOCK_ROWS == 0
    ):
        if t != GGMLType.Q4_K:
            raise ValueError(f"the vnni_k layout holds Q4_K weights, not {t.name}")
        if n % VNNI_BLOCK_ROWS == 0 and native.vnni_kernels():
            return pack_ggml_k_blocks(raw, n, k)  # one native pass; the same bytes as below
        return pack_int4_k(n, k, q4_k_rows(raw, shape))  # says why the weight does not fit
    layout = layout or default_layout()
    simple = t in (GGMLType.Q4_0, GGMLType.Q4_1)
    if simple and layout == "vnni" and native.vnni_kernels() and n % VNNI_BLOCK_ROWS == 0:
        return pack_ggml_blocks(raw, n, k, has_min=int(ggml_type) == GGMLType.Q4_1)
    return pack_int4(n, k, rows, layout)


__all__ = ["AFFINE_Q4_TYPES", "pack_q4"]
