"""File sizes and RAM computed from shapes, checked against real files."""

from __future__ import annotations

import pytest

from llamita.engine.loader import load_model
from llamita.jobs.memory import LLAMA_3_1, estimate
from llamita.weights.gguf import open_gguf

# Published sizes of llama.cpp quantizations of Meta-Llama-3.1-8B/70B-Instruct (GB = 1e9 bytes,
# as listed on the model cards of the widely used GGUF conversions). The files also hold ~8 MB
# of metadata (the 128K-token vocabulary), which the estimate leaves out.
PUBLISHED_GB = {
    ("8B", "F16"): 16.07,
    ("8B", "Q8_0"): 8.54,
    ("8B", "Q6_K"): 6.60,
    ("8B", "Q5_K_M"): 5.73,
    ("8B", "Q4_K_M"): 4.92,
    ("8B", "Q3_K_M"): 4.02,
    ("8B", "Q2_K"): 3.18,
    ("70B", "Q8_0"): 74.98,
    ("70B", "Q6_K"): 57.89,
    ("70B", "Q5_K_M"): 49.95,
    ("70B", "Q4_K_M"): 42.52,
    ("70B", "Q3_K_M"): 34.27,
    ("70B", "Q2_K"): 26.38,
}


@pytest.mark.parametrize("key", sorted(PUBLISHED_GB), ids=lambda k: "-".join(k))
def test_file_size_matches_published_llama_cpp_files(key):
    size, type_name = key
    got = estimate(LLAMA_3_1[size], type_name).file_bytes / 1e9
    assert got == pytest.approx(PUBLISHED_GB[key], abs=0.015)


def test_default_model_tensor_bytes_equal_the_file(default_model_path):
    gguf, cfg = open_gguf(default_model_path)
    try:
        assert estimate(cfg, "Q4_1").file_bytes == sum(i.nbytes for i in gguf.tensors.values())
    finally:
        gguf.close()


def test_resident_estimate_matches_the_loaded_model(default_model_path):
    from llamita.kernels.int4 import int4_supported
    from llamita.kernels.int8 import int8_supported

    if not (int4_supported() and int8_supported()):
        pytest.skip("torch's int4/int8 CPU kernels are not available here")
    loaded = load_model(default_model_path, dtype="bfloat16", compact=True)
    held = {t.data_ptr(): t.nbytes for t in [*loaded.model.parameters(), *loaded.model.buffers()]}
    inv_freq = loaded.model.inv_freq.nbytes
    got = sum(held.values()) - inv_freq
    want = estimate(loaded.config, "Q4_1").weight_bytes
    assert got == pytest.approx(want, rel=0.01)


def test_kv_cache_of_llama_3_1_8b():
    e = estimate(LLAMA_3_1["8B"], "Q4_K_M")
    assert e.kv_bytes_per_token == 128 * 1024  # 2 x 32 layers x 8 heads x 128 dims x 2 bytes
    assert e.kv_cache_bytes(131072) == 16 * 2**30


@pytest.mark.parametrize("which, kv_cache_tokens", [("default", 256), ("tiny", None)])
def test_served_bytes_count_the_kv_cache_the_engine_allocates(default_model_path, tmp_path, which, kv_cache_tokens):
    """The server's estimate of a model (serving/model_pool.py sizes loads by it): weights,
    plus the KV cache LLMEngine really allocates (its tensors' bytes; None: its default, here
    context x max_running), plus the tokenizer."""
    from llamita.engine.llm_engine import LLMEngine
    from llamita.jobs.memory import TOKENIZER_BYTES_PER_TOKEN, estimate_file, served_bytes

    from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

    path = default_model_path
    if which == "tiny":
        cfg = tiny_hf_config()
        path = write_gguf(tmp_path / "tiny.gguf", cfg, random_hf_weights(cfg))
    loaded = load_model(path, dtype="bfloat16")
    engine = LLMEngine(loaded, kv_cache_tokens=kv_cache_tokens, max_running=4)
    cache = sum(t.nbytes for t in [*engine.cache.k, *engine.cache.v])
    cfg, est = estimate_file(path)
    want = est.weight_bytes + cache + cfg.vocab_size * TOKENIZER_BYTES_PER_TOKEN
    assert served_bytes(path, kv_cache_tokens=kv_cache_tokens, max_running=4) == pytest.approx(want, rel=1e-3)
