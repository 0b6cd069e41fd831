"""Perplexity against an independent reference: transformers' logits and a plain loop here.

The reference re-implements llama.cpp's method from its description (windows of n_ctx tokens,
BOS in front of each when the tokenizer adds one, second half scored) with its own code, so a
slip in the engine's windowing, scoring or statistics shows up as a mismatch.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from llamita.engine.loader import load_model
from llamita.errors import InvalidParameterError
from llamita.jobs.perplexity import perplexity, perplexity_windows

from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the wick, "
    "polished the great lens and wrote the weather in a small leather book: wind from the west, "
    "a grey swell, two fishing boats returning late. In winter the storms came without warning, "
    "and the light had to burn until morning while the waves broke over the rocks below. "
    "Children from the village sometimes visited on Sundays. They asked how far the beam could "
    "reach, and he told them that on a clear night a sailor twenty miles out could see it "
    "flash once every ten seconds, which was how ships knew which coast they were passing. "
    "When the keeper finally retired, an automatic lamp replaced him, and nobody wrote in the "
    "leather book again."
)


def reference_perplexity(
    logits_of, tokens: list[int], n_ctx: int, bos_id: int | None, chunks: int | None = None
) -> tuple[float, float, int]:
    """(ppl, ± stderr, tokens scored): windows evaluated one by one with `logits_of`
    ((n_ctx,) ids -> (n_ctx, vocab) logits), NLL of positions n_ctx/2+1 .. n_ctx-1 in float64."""
    n = len(tokens) // n_ctx if chunks is None else min(chunks, len(tokens) // n_ctx)
    nlls = []
    for i in range(n):
        window = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        if bos_id is not None:
            window[0] = bos_id
        ids = torch.tensor(window)
        logits = logits_of(ids).double()
        for j in range(n_ctx // 2, n_ctx - 1):
            nlls.append(float(F.cross_entropy(logits[j], ids[j + 1])))
    nll = torch.tensor(nlls, dtype=torch.float64)
    mean = float(nll.mean())
    stderr = float(nll.std(unbiased=False)) / math.sqrt(len(nlls) - 1)
    return math.exp(mean), math.exp(mean) * stderr, len(nlls)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny model (byte-level vocab) in float32, with its transformers twin."""
    transformers = pytest.importorskip("transformers")
    cfg = tiny_hf_config()
    sd = random_hf_weights(cfg, seed=3)
    path = write_gguf(tmp_path_factory.mktemp("ppl") / "tiny.gguf", cfg, sd, context_length=128)
    cfg = dict(cfg)
    rope = dict(cfg.pop("rope_scaling"), rope_theta=cfg.pop("rope_theta"))
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, rope_parameters=rope))
    hf.load_state_dict(sd, strict=True)
    return load_model(path, dtype="float32", device="cpu"), hf.float().eval()


@pytest.mark.slow
def test_default_model_matches_transformers(llm_f32, hf_reference):
    hf_model, hf_tok = hf_reference
    tokens = hf_tok(TEXT, add_special_tokens=False).input_ids  # SmolLM2 adds no BOS
    assert not llm_f32.tokenizer.add_bos

    def hf_logits(ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return hf_model(ids[None]).logits[0].float()

    ref_ppl, ref_se, ref_count = reference_perplexity(hf_logits, tokens, 64, None)
    ours = perplexity(llm_f32.loaded.model, llm_f32.tokenizer, TEXT, n_ctx=64)
    assert ours.text_tokens == len(tokens)
    assert ours.n_chunks == len(tokens) // 64 >= 2
    assert ours.tokens_scored == ref_count == ours.n_chunks * 31
    assert ours.perplexity == pytest.approx(ref_ppl, rel=1e-4)
    assert ours.perplexity_stderr == pytest.approx(ref_se, rel=1e-3)
    assert ours.mean_nll == pytest.approx(math.log(ref_ppl), rel=1e-4)


@pytest.mark.parametrize("add_bos", [False, True])
def test_tiny_model_matches_transformers(tiny, add_bos):
    loaded, hf = tiny
    tokenizer = copy.copy(loaded.tokenizer)
    tokenizer.add_bos = add_bos  # the tiny vocab says no; llama.cpp then puts BOS on every window
    tokens = tokenizer.encode(TEXT, add_bos=add_bos)

    def hf_logits(ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return hf(ids[None]).logits[0].float()

    ref_ppl, ref_se, ref_count = reference_perplexity(hf_logits, tokens, 128, tokenizer.bos_id if add_bos else None)
    ours = perplexity(loaded.model, tokenizer, TEXT, n_ctx=128)
    assert ours.text_tokens == len(tokens) and ours.n_chunks == len(tokens) // 128 >= 3
    assert ours.tokens_scored == ref_count == ours.n_chunks * 63
    assert ours.perplexity == pytest.approx(ref_ppl, rel=1e-4)
    assert ours.perplexity_stderr == pytest.approx(ref_se, rel=1e-3)


def test_bos_changes_the_result(tiny):
    loaded, _ = tiny
    with_bos = copy.copy(loaded.tokenizer)
    with_bos.add_bos = True
    a = perplexity(loaded.model, loaded.tokenizer, TEXT, n_ctx=64, chunks=2)
    b = perplexity(loaded.model, with_bos, TEXT, n_ctx=64, chunks=2)
    assert a.perplexity != b.perplexity
    assert b.text_tokens == a.text_tokens + 1


def test_chunks_limit_and_progress(tiny):
    loaded, _ = tiny
    seen = []
    full = perplexity(loaded.model, loaded.tokenizer, TEXT, n_ctx=64, on_chunk=seen.append)
    assert [p.index for p in seen] == list(range(full.n_chunks))
    assert all(p.n_chunks == full.n_chunks for p in seen)
    assert [p.tokens_scored for p in seen] == [31 * (i + 1) for i in range(full.n_chunks)]
    assert seen[-1].perplexity == full.perplexity
    two = perplexity(loaded.model, loaded.tokenizer, TEXT, n_ctx=64, chunks=2)
    assert (two.n_chunks, two.tokens_scored) == (2, 62)
    assert two.perplexity == pytest.approx(seen[1].perplexity, rel=1e-12)
    many = perplexity(loaded.model, loaded.tokenizer, TEXT, n_ctx=64, chunks=10_000)
    assert many.n_chunks == full.n_chunks  # a limit above what fits scores everything


def test_windows_drop_the_tail_and_take_bos():
    tokens = list(range(10, 31))  # 21 tokens
    w = perplexity_windows(tokens, 4, None)
    assert w.tolist() == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 20, 21], [22, 23, 24, 25], [26, 27, 28, 29]]
    w = perplexity_windows(tokens, 8, bos_id=1, chunks=2)
    assert w.tolist() == [[1, 11, 12, 13, 14, 15, 16, 17], [1, 19, 20, 21, 22, 23, 24, 25]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_ctx=63), "even"),
        (dict(n_ctx=2), "even number of tokens >= 4"),
        (dict(n_ctx=0), ">= 4"),
        (dict(n_ctx=256), "more than the model's context window of 128"),
        (dict(n_ctx=64, chunks=0), "positive integer"),
    ],
)
def test_bad_settings(tiny, kwargs, message):
    loaded, _ = tiny
    with pytest.raises(InvalidParameterError, match=message):
        perplexity(loaded.model, loaded.tokenizer, TEXT, **kwargs)


def test_text_too_short_says_how_many_tokens(tiny):
    loaded, _ = tiny
    n = len(loaded.tokenizer.encode("a short text"))
    with pytest.raises(InvalidParameterError, match=f"has {n} tokens but one window of n_ctx=64 needs at least 64"):
        perplexity(loaded.model, loaded.tokenizer, "a short text", n_ctx=64)
