"""Embeddings (OpenAI and Ollama) and echoed prompt log-probabilities, over a live server,
against the engine functions' independent references (transformers-checked in tests/engine)
and the static-cache generation path."""

from __future__ import annotations

import base64
import math

import httpx
import numpy as np
import ollama
import openai
import torch

from llamita.engine.embeddings import embed

from serving_helpers import MODEL_NAME

TEXTS = ["I love dogs.", "Me encantan los perros."]


def _reference(llm, text: str) -> np.ndarray:
    return embed(llm.loaded.model, llm.encode_prompt(text), llm.tokenizer.vocab_size).numpy()


def test_openai_embeddings(server, llm_f32):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", timeout=60)
    out = client.embeddings.create(model=MODEL_NAME, input=TEXTS)
    assert [d.index for d in out.data] == [0, 1]
    for d, text in zip(out.data, TEXTS):
        assert np.abs(np.array(d.embedding) - _reference(llm_f32, text)).max() < 1e-5
    assert out.usage.prompt_tokens == sum(len(llm_f32.encode_prompt(t)) for t in TEXTS)
    # base64: little-endian float32, the same vector.
    raw = httpx.post(
        f"{server.url}/v1/embeddings", timeout=60, json={"input": TEXTS[0], "encoding_format": "base64"}
    ).json()
    packed = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.abs(packed - _reference(llm_f32, TEXTS[0])).max() < 1e-5


def test_ollama_embed(server, llm_f32):
    client = ollama.Client(host=server.url, timeout=60)
    out = client.embed(model=MODEL_NAME, input=TEXTS)
    assert len(out.embeddings) == 2
    assert np.abs(np.array(out.embeddings[1]) - _reference(llm_f32, TEXTS[1])).max() < 1e-5
    legacy = httpx.post(
        f"{server.url}/api/embeddings", json={"model": MODEL_NAME, "prompt": TEXTS[0]}, timeout=60
    ).json()
    assert np.abs(np.array(legacy["embedding"]) - _reference(llm_f32, TEXTS[0])).max() < 1e-5


def test_embedding_errors(server):
    for body, status in (
        ({"input": []}, 400),
        ({"input": [1, "a"]}, 400),
        ({}, 400),
        ({"input": "x", "dimensions": 8}, 400),
        ({"input": "x", "model": "gpt-9+nope"}, 404),
        ({"input": "x", "encoding_format": "hex"}, 400),
    ):
        r = httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=30)
        assert r.status_code == status, body
        assert "message" in r.json()["error"]
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_echo_scores_the_prompt(server, llm_f32):
    """lm-evaluation-harness's loglikelihood request: echo + logprobs + max_tokens 0 (or 1)."""
    prompt = "The capital of France is Paris"
    ids = llm_f32.encode_prompt(prompt)
    with torch.inference_mode():
        ref = torch.log_softmax(llm_f32.loaded.model(torch.tensor([ids]))[0], dim=-1)  # uncached
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", timeout=60)
    for max_tokens in (0, 1):
        out = client.completions.create(
            model=MODEL_NAME, prompt=prompt, echo=True, logprobs=2, max_tokens=max_tokens, temperature=0
        )
        choice = out.choices[0]
        lp = choice.logprobs
        assert choice.text.startswith(prompt)
        assert len(lp.tokens) == len(ids) + max_tokens
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        for i in range(1, len(ids)):
            assert math.isclose(lp.token_logprobs[i], float(ref[i - 1, ids[i]]), abs_tol=1e-4)
            assert len(lp.top_logprobs[i]) == 2
        assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
        if max_tokens:
            greedy = llm_f32.generate(prompt_token_ids=ids, params=_greedy(1)).token_ids
            assert lp.tokens[-1] == llm_f32.tokenizer.token_piece(greedy[0])
    r = httpx.post(f"{server.url}/v1/completions", timeout=30, json={"prompt": prompt, "echo": True, "stream": True})
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_supported"


def _greedy(n: int):
    from llamita import SamplingParams

    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
