"""llamita against transformers' LlamaForCausalLM on the default model's GGUF (float32).

transformers dequantizes the GGUF and un-permutes Q/K itself, so agreement here checks our
reader, dequantization, Q/K layout, RoPE, GQA, norms and tied head together.
"""

from __future__ import annotations

import pytest
import torch

from llamita import SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = {
    "english": "The history of the printing press begins in Europe, where",
    "spanish": "La inteligencia artificial está transformando el mundo porque",
    "code": 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n',
}


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("lang", PROMPTS)
def test_logits_match_at_every_position(llm_f32, hf_reference, lang):
    hf_model, _ = hf_reference
    ids = llm_f32.encode_prompt(PROMPTS[lang])
    x = torch.tensor([ids])
    with torch.inference_mode():
        ours = llm_f32.loaded.model(x)
        ref = hf_model(x).logits.float()
    assert ours.shape == ref.shape == (1, len(ids), llm_f32.config.vocab_size)
    assert _rel_err(ours, ref) <= 1e-4


@pytest.mark.parametrize("lang", PROMPTS)
def test_greedy_32_tokens_match(llm_f32, hf_reference, lang):
    hf_model, _ = hf_reference
    ids = llm_f32.encode_prompt(PROMPTS[lang])
    out = llm_f32.generate(prompt_token_ids=ids, params=SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    with torch.inference_mode():
        ref = hf_model.generate(
            torch.tensor([ids]), max_new_tokens=32, do_sample=False, min_new_tokens=32, pad_token_id=0
        )
    assert out.token_ids == ref[0, len(ids) :].tolist()
    assert out.finish_reason == "length"


def test_prompt_tokens_match_transformers_tokenizer(llm_f32, hf_reference):
    _, hf_tok = hf_reference
    for text in PROMPTS.values():
        assert llm_f32.tokenizer.encode(text) == hf_tok(text, add_special_tokens=False).input_ids
