"""Small random Llama-3.1-shaped models written as GGUF, run by llamita and by transformers.

Covers what the default model does not: llama3 RoPE scaling through `rope_freqs`, GQA 4:1, an
untied output head, F16/Q8_0/Q4_1 weights, positions beyond the original context.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from llamita.config import ModelConfig, RopeScaling
from llamita.engine.loader import load_model
from llamita.model.rope import rope_inv_freq

from tiny_models import hf_llama, random_hf_weights, tiny_hf_config, write_gguf

transformers = pytest.importorskip("transformers")
Q = gguf.GGMLQuantizationType


def prefill_then_decode(model, config, tokens: torch.Tensor, split: int) -> torch.Tensor:
    """Logits for `tokens` (1, n): the first `split` in one prefill, the rest one step each."""
    from llamita.model.kv_cache import KVCache

    n = tokens.shape[1]
    with torch.inference_mode():
        cache = KVCache(config, 1, n, dtype=torch.bfloat16)
        got = [model(tokens[:, :split], torch.arange(split)[None], cache)[0]]
        for p in range(split, n):
            got.append(model(tokens[:, p : p + 1], torch.tensor([[p]]), cache)[0])
    return torch.cat(got)


def roundtrip(sd: dict[str, torch.Tensor], qtype: Q) -> dict[str, torch.Tensor]:
    """The weights as a reader of a `qtype` file must see them, dequantized by the gguf package."""
    if qtype == Q.F32:
        return sd
    out = {}
    for k, v in sd.items():
        if v.ndim == 2:
            q = gguf.quants.quantize(v.numpy(), qtype)
            v = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(q, qtype))).reshape(v.shape)
        out[k] = v
    return out


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.Q8_0, Q.Q4_1, Q.BF16])
@pytest.mark.parametrize("tied", [False, True])
def test_logits_match_transformers(tmp_path, qtype, tied):
    cfg = tiny_hf_config(tie_word_embeddings=tied)
    sd = random_hf_weights(cfg, seed=1)
    path = write_gguf(tmp_path / "tiny.gguf", cfg, sd, qtype)
    ours = load_model(path, dtype="float32", device="cpu")
    assert ours.config.tie_word_embeddings == tied
    ref = hf_llama(cfg, roundtrip(sd, qtype))
    tokens = torch.randint(0, cfg["vocab_size"], (2, 120), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = ours.model(tokens)
        b = ref(tokens).logits
    assert float((a - b).abs().max() / b.abs().max()) <= 1e-5


def test_llama3_inv_freq_matches_transformers():
    cfg = tiny_hf_config()
    s = cfg["rope_scaling"]
    ours = rope_inv_freq(
        ModelConfig(
            n_layers=1,
            dim=64,
            n_heads=4,
            n_kv_heads=1,
            ffn_dim=96,
            vocab_size=300,
            head_dim=16,
            rope_theta=cfg["rope_theta"],
            rope_scaling=RopeScaling(
                "llama3",
                s["factor"],
                s["low_freq_factor"],
                s["high_freq_factor"],
                s["original_max_position_embeddings"],
            ),
        )
    )
    ref = hf_llama(cfg, random_hf_weights(cfg)).model.rotary_emb.inv_freq
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=0)
    base = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, 16, 2).float() / 16))
    assert (ours < base).sum() == 7  # scaling really acted: all but the highest frequency


def test_llama31_8b_divisors_from_spec():
    """docs/llama-reference.md §2.5: for hd=128, theta=5e5, factor 8 the smooth band has these divisors."""
    cfg = ModelConfig(
        n_layers=1,
        dim=4096,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=14336,
        vocab_size=128256,
        rope_theta=500000.0,
        rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 8192),
    )
    base = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).double() / 128))
    divisors = (base / rope_inv_freq(cfg).double()).tolist()
    assert all(abs(d - 1) < 1e-5 for d in divisors[:29])
    assert all(abs(d - 8) < 1e-4 for d in divisors[35:])
    expected = [1.2075, 1.5534, 2.0263, 2.6945, 3.6843, 5.2573]
    assert [round(d, 4) for d in divisors[29:35]] == expected


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_int4_kernel_path_matches_transformers(tmp_path, qtype):
    """bfloat16 on CPU keeps 4-bit weights packed for torch's int4 kernel; prefill (many rows)
    and decode (one row) both stay within bfloat16 rounding of the float32 reference."""
    from llamita.kernels.int4 import int4_supported
    from llamita.model.linear import DENSE_MIN_ROWS, Int4Linear

    if not int4_supported():
        pytest.skip("torch's int4 CPU kernel is not available here")
    cfg = tiny_hf_config()
    sd = random_hf_weights(cfg, seed=2)
    ours = load_model(write_gguf(tmp_path / "q4.gguf", cfg, sd, qtype), dtype="bfloat16", device="cpu")
    # lm_head (264 rows: not a multiple of 16) stays dense; every other linear is packed.
    assert sum(isinstance(m, Int4Linear) for m in ours.model.modules()) == 2 * 7
    ref = hf_llama(cfg, roundtrip(sd, qtype))
    n = DENSE_MIN_ROWS + 20  # the prompt takes the dense path, the steps after it the int4 kernel
    tokens = torch.randint(0, cfg["vocab_size"], (1, n), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = ref(tokens).logits[0]
    got = prefill_then_decode(ours.model, ours.config, tokens, n - 8)
    assert float((got - want).abs().max() / want.abs().max()) < 0.03


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q5_1, Q.Q4_0])
@pytest.mark.parametrize("tied", [False, True])
def test_compact_weights_match_transformers(tmp_path, qtype, tied):
    """bfloat16 on CPU keeps every quantized weight compact: non-4-bit linears as per-row int8,
    a quantized embedding as its file bytes (or, tied, the head's int8 table). Prefill and
    decode both stay close to the float32 reference on the file's exact weights."""
    from llamita.kernels.int4 import int4_supported
    from llamita.kernels.int8 import int8_supported
    from llamita.model.embedding import EncodedEmbedding, Int8Embedding
    from llamita.model.linear import DENSE_MIN_ROWS, Int4Linear, Int8Linear

    if not (int8_supported() and int4_supported()):
        pytest.skip("torch's int4/int8 CPU kernels are not available here")
    cfg = tiny_hf_config(tie_word_embeddings=tied)
    sd = random_hf_weights(cfg, seed=3)
    ours = load_model(write_gguf(tmp_path / "q.gguf", cfg, sd, qtype), dtype="bfloat16", device="cpu")
    kinds = [type(m) for m in ours.model.modules()]
    n_linear = 2 * 7
    if qtype == Q.Q4_0:
        assert kinds.count(Int4Linear) == n_linear
        assert kinds.count(Int8Linear) == 1  # the head: 264 rows is no multiple of 16 for int4
    else:
        assert kinds.count(Int8Linear) == n_linear + 1 and Int4Linear not in kinds
    if tied:  # (for Q4_0 too: 264 rows cannot take the int4 head, so the table is int8)
        assert isinstance(ours.model.embed_tokens, Int8Embedding)
        assert ours.model.embed_tokens.qweight is ours.model.lm_head.qweight  # one table
    else:
        assert isinstance(ours.model.embed_tokens, EncodedEmbedding)
    ref = hf_llama(cfg, roundtrip(sd, qtype))
    n = DENSE_MIN_ROWS + 12
    tokens = torch.randint(0, cfg["vocab_size"], (1, n), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        want = ref(tokens).logits[0]
    got = prefill_then_decode(ours.model, ours.config, tokens, n - 6)
    assert float((got - want).abs().max() / want.abs().max()) < 0.03
