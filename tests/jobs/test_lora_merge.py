"""`llamita lora merge`: the merged GGUF gives peft + transformers' logits on the same base and
adapter (no adapter applied at run time), in float, Q8_0 and in the base's own Q4_1 types."""

from __future__ import annotations

import gguf
import pytest
import torch
from typer.testing import CliRunner

from llamita.cli.main import app
from llamita.engine.loader import load_model
from llamita.weights.gguf_reader import GGUFFile

from lora_models import hf_state_dict, make_peft_adapter, peft_model, rel_err, write_gguf_lora
from tiny_models import hf_llama, random_hf_weights, tiny_hf_config, write_gguf

pytest.importorskip("peft")
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merge")
    cfg = tiny_hf_config()
    sd = random_hf_weights(cfg, seed=13)
    return tmp, cfg, sd, make_peft_adapter(tmp / "tone", cfg, sd, seed=8)


def logits(path, tokens):
    loaded = load_model(path, dtype="float32", device="cpu")
    assert loaded.model.lora.names == []  # nothing applied at run time
    with torch.inference_mode():
        return loaded.model(tokens)


@pytest.mark.parametrize("type_name, tol", [("keep", 1e-5), ("F16", 3e-3), ("Q8_0", 5e-2)])
def test_merged_float_base_equals_peft(tiny, type_name, tol):
    tmp, cfg, sd, folder = tiny
    base = write_gguf(tmp / "base.gguf", cfg, sd)
    out = tmp / f"merged-{type_name}.gguf"
    result = CliRunner().invoke(
        app, ["lora", "merge", "--model", str(base), "--lora", str(folder), "--out", str(out), "--type", type_name]
    )
    assert result.exit_code == 0, result.output
    tokens = torch.randint(0, cfg["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = peft_model(cfg, sd, folder)(tokens).logits
    err = rel_err(logits(out, tokens), want)
    assert err <= tol and err < rel_err(logits(base, tokens), want) / 5  # and the adapter mattered
    types = {i.name: i.ggml_type for i in GGUFFile(out).tensors.values()}
    assert types["blk.0.attn_q.weight"] == {"keep": Q.F32, "F16": Q.F16, "Q8_0": Q.Q8_0}[type_name]


def test_merge_into_quantized_base_keeps_its_types(tiny):
    """Q4_1 base, GGUF adapter at half scale: every tensor keeps its Q4_1/F32 type, and the
    logits are those of peft's own merge re-encoded in Q4_1."""
    tmp, cfg, sd, folder = tiny
    base = write_gguf(tmp / "q4.gguf", cfg, sd, Q.Q4_1)
    lora = write_gguf_lora(tmp / "tone.gguf", cfg, folder)
    out = tmp / "merged-q4.gguf"
    result = CliRunner().invoke(app, ["lora", "merge", "-m", str(base), "--lora", f"{lora}:0.5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    before = {i.name: i.ggml_type for i in GGUFFile(base).tensors.values()}
    after = {i.name: i.ggml_type for i in GGUFFile(out).tensors.values()}
    assert after == before
    # Reference: peft's own merge (merge_and_unload) onto the base's exact dequantized weights,
    # each merged matrix then re-encoded as Q4_1 by the gguf package.
    f32 = load_model(base, dtype="float32", device="cpu")
    ref = peft_model(cfg, hf_state_dict(f32.model), folder, scale=0.5)
    merged = ref.merge_and_unload().state_dict()
    for k, v in merged.items():
        if k.startswith("model.layers.") and v.ndim == 2:
            q = gguf.quants.quantize(v.numpy(), Q.Q4_1)
            merged[k] = torch.from_numpy(gguf.quants.dequantize(q, Q.Q4_1)).reshape(v.shape)
    tokens = torch.randint(0, cfg["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = hf_llama(cfg, merged)(tokens).logits
    assert rel_err(logits(out, tokens), want) <= 1e-3
    assert rel_err(logits(base, tokens), want) > 1e-2
