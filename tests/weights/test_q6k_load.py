"""Loading a Q6_K GGUF keeps its linear weights in their own 6-bit blocks ("vnni_q6k",
kernels/csrc/q6k_vnni.cpp) instead of re-quantizing them to int8 per row: the dense weights
are exactly what the `gguf` package dequantizes the file to, and the model runs close to the
same file loaded dense."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from llamita.kernels import native
from llamita.kernels.int4 import dequantize_int4
from llamita.model.linear import Int4Linear
from llamita.weights.gguf_reader import GGUFFile
from llamita.weights.gguf_writer import GGUFSource, write_quantized
from llamita.weights.quant_mix import file_type
from tests.tiny_models import random_hf_weights, tiny_hf_config, write_gguf


def test_q6k_weights_load_in_their_own_blocks(tmp_path) -> None:
    from llamita.engine.loader import load_model

    if not native.vnni_kernels():
        pytest.skip(f"no kernel level loads here: {native.kernel_level_skipped()}")
    # Columns a multiple of 256 (Q6_K's super-block), rows of 16 (the kernels' blocks).
    cfg = tiny_hf_config(hidden_size=256, intermediate_size=512, head_dim=64)
    source = write_gguf(tmp_path / "tiny-f32.gguf", cfg, random_hf_weights(cfg))
    out = tmp_path / "tiny-q6k.gguf"
    write_quantized(GGUFSource(GGUFFile(source)), out, file_type("Q6_K"))
    reader = gguf.GGUFReader(out)
    reference = {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type)
        for t in reader.tensors
        if t.tensor_type == gguf.GGMLQuantizationType.Q6_K
    }
    model = load_model(out, dtype="float32", compact=True).model
    packed = {n: m for n, m in model.named_modules() if isinstance(m, Int4Linear)}
    assert packed and all(m.layout == "vnni_q6k" for m in packed.values())
    down = packed["layers.0.mlp.down_proj"]
    want = torch.from_numpy(np.ascontiguousarray(reference["blk.0.ffn_down.weight"])).float()
    assert torch.equal(dequantize_int4(down.weight_int4, torch.float32), want)
    # The byte vocabulary's rows are not whole 16-row blocks: that weight stays int8 per row.
    assert ("lm_head" in packed) == (cfg["vocab_size"] % 16 == 0)
    tokens = torch.tensor([[5, 17, 42, 99, 3, 64]])
    logits = []
    # Against the same file loaded dense (float32, its exact weights): only the kernels'
    # rounding of activations to int8 per 32 differs.
    for m in (load_model(out, dtype="float32").model, model):
        with torch.inference_mode():
            logits.append(m(tokens, torch.arange(tokens.shape[1])[None])[0])
    err = (logits[0] - logits[1]).abs().max() / logits[0].abs().max()
    assert 0 < err < 0.02, err  # 0.012 measured (seeded weights)
