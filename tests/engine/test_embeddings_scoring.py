"""Embeddings and prompt log-probabilities against transformers on the same GGUF."""

from __future__ import annotations

import pytest
import torch

import llamita.engine.chunked_forward as chunked
from llamita.engine.embeddings import embed
from llamita.engine.scoring import prompt_logprobs
from llamita.errors import ContextOverflowError, InvalidParameterError

TEXTS = ["El rey y la reina viven en el castillo.", "The quick brown fox jumps over the lazy dog."]


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [256, 5])
def test_embedding_is_transformers_mean_last_hidden_state(llm_f32, hf_reference, monkeypatch, chunk):
    monkeypatch.setattr(chunked, "CHUNK", chunk)  # chunked through the KV cache or in one pass
    hf_model, _ = hf_reference
    for text in TEXTS:
        ids = llm_f32.encode_prompt(text)
        with torch.inference_mode():
            hidden = hf_model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        ref = torch.nn.functional.normalize(hidden.mean(dim=0), dim=0)
        ours = embed(llm_f32.loaded.model, ids, llm_f32.tokenizer.vocab_size)
        assert float(ours.norm()) == pytest.approx(1.0, abs=1e-5)
        assert float((ours - ref).abs().max()) < 1e-4


def test_similar_sentences_are_closer(llm_f32):
    model, n = llm_f32.loaded.model, llm_f32.tokenizer.vocab_size
    a, b, c = (
        embed(model, llm_f32.encode_prompt(t), n)
        for t in ("I love dogs.", "I really like dogs.", "Quarterly tax filings are due in April.")
    )
    assert float(a @ b) > float(a @ c)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [256, 4])
def test_prompt_logprobs_equal_transformers(llm_f32, hf_reference, monkeypatch, chunk):
    monkeypatch.setattr(chunked, "CHUNK", chunk)
    hf_model, _ = hf_reference
    ids = llm_f32.encode_prompt(TEXTS[1])
    with torch.inference_mode():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)
    out = prompt_logprobs(llm_f32.loaded.model, ids, llm_f32.tokenizer.vocab_size, top=3)
    assert out[0] is None and len(out) == len(ids)
    for i, lp in enumerate(out[1:], start=1):
        assert lp.token_id == ids[i]
        assert abs(lp.logprob - float(ref[i - 1, ids[i]])) < 1e-4
        assert [t for t, _ in lp.top] == ref[i - 1].topk(3).indices.tolist()


def test_bad_inputs(llm_f32):
    model, n = llm_f32.loaded.model, llm_f32.tokenizer.vocab_size
    with pytest.raises(InvalidParameterError):
        embed(model, [], n)
    with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
        prompt_logprobs(model, [1, n], n)
    with pytest.raises(ContextOverflowError, match="too many"):
        embed(model, [1] * (model.config.context_length + 1), n)
