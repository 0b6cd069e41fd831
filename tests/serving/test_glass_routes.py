"""The /glass/... routes over a live server on the default model, each against a recomputation
that does not go through the route: the tokenizer's (and transformers') ids, softmax(logits/T)
of the model's own forward pass, attention weights recomputed from the layers' q/k, and
transformers' eager attention."""

from __future__ import annotations

import threading

import httpx
import pytest
import torch

from llamita.glass.attention import attention_weights

from serving_helpers import MODEL_NAME, start_server

SPANISH = "El perro que persiguió al gato cruzó la calle"
PROMPT = "The capital of France is"
TIMEOUT = 120


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=TIMEOUT)


def ok(server, path: str, body: dict) -> dict:
    r = post(server, path, body)
    assert r.status_code == 200, r.text
    return r.json()


def test_tokens_equal_the_tokenizers(server, loaded, hf_reference):
    _, hf_tok = hf_reference
    view = ok(server, "/glass/tokens", {"text": SPANISH, "model": MODEL_NAME})
    assert view["ids"] == loaded.tokenizer.encode(SPANISH) == hf_tok.encode(SPANISH, add_special_tokens=False)
    assert [t["id"] for t in view["tokens"]] == view["ids"]
    assert [t["bytes"] for t in view["tokens"]] == [len(loaded.tokenizer.token_bytes(i)) for i in view["ids"]]
    assert "".join(t["piece"] for t in view["tokens"]) == SPANISH
    assert view["n_bytes"] == len(SPANISH.encode()) and view["n_words"] == 9


# The views compute probabilities in float64 from the model's float32 logits, as the references
# below do from the same forward pass (same call, same matmul shapes: bit-equal logits). What is
# left is float64 rounding over a 49k vocabulary (~1e-16 relative): a bound far below the ~1e-5
# error a float32 softmax would show, so a view that lost precision fails here.
F64_PROBS = 1e-12


def _reference_logits(loaded, ids: list[int], *, last_only: bool) -> torch.Tensor:
    """The model's logits (V,) after `ids`: `last_only` as /glass/next runs it (only the last
    position projected), else the whole forward as the logit lens runs it."""
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([ids]), last_only=last_only)[0, -1].float()
    return logits[: loaded.tokenizer.vocab_size]


@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7])
def test_next_token_is_softmax_of_logits_over_t(server, loaded, temperature):
    tok = loaded.tokenizer
    ids = tok.encode(PROMPT, add_bos=tok.add_bos)
    logits = _reference_logits(loaded, ids, last_only=True)
    view = ok(server, "/glass/next", {"prompt": PROMPT, "raw": True, "temperature": temperature, "top": 8})
    assert view["prompt_tokens"] == len(ids)
    ref_ids = logits.topk(8).indices.tolist()
    assert [t["id"] for t in view["tokens"]] == ref_ids
    assert [t["piece"] for t in view["tokens"]] == [
        tok.token_bytes(i).decode("utf-8", "backslashreplace") for i in ref_ids
    ]
    (dist,) = view["distributions"]
    p = torch.softmax(logits.double() / temperature, dim=-1)
    assert dist["temperature"] == temperature and not dist["filtered"]
    assert max(abs(a - b) for a, b in zip(dist["probs"], p[ref_ids].tolist())) < F64_PROBS
    assert dist["entropy_nats"] == pytest.approx(float(-(p * p.clamp_min(1e-300).log()).sum()), rel=F64_PROBS)


def test_next_token_many_temperatures_and_filters(server, loaded):
    tok = loaded.tokenizer
    logits = _reference_logits(loaded, tok.encode(PROMPT, add_bos=tok.add_bos), last_only=True)
    temps = [0.0, 0.5, 2.0]
    view = ok(server, "/glass/next", {"prompt": PROMPT, "raw": True, "temperatures": temps, "top": 5, "top_k": 3})
    dists = view["distributions"]
    assert [(d["temperature"], d["filtered"]) for d in dists] == [(t, f) for f in (False, True) for t in temps]
    assert dists[0]["probs"] == [1.0, 0.0, 0.0, 0.0, 0.0]  # T = 0: greedy
    # top_k = 3 keeps the three best; among them the temperature alone sets the shares.
    for d in dists[4:]:
        p = torch.softmax(logits.topk(3).values.double() / d["temperature"], dim=-1).tolist()
        assert d["probs"][3:] == [0.0, 0.0] and d["candidates"] == 3
        assert max(abs(a - b) for a, b in zip(d["probs"][:3], p)) < F64_PROBS
    assert view["filter"] == {"top_k": 3, "top_p": 1.0, "min_p": 0.0}


def test_attention_rows_are_the_models_weights(server, loaded):
    tok = loaded.tokenizer
    ids = tok.encode(SPANISH, add_bos=tok.add_bos)
    weights = attention_weights(loaded.model, ids)  # (L, H, S, S)
    one = ok(server, "/glass/attention", {"text": SPANISH, "raw": True, "layer": 3, "head": 5})
    assert one["ids"] == ids and len(one["tokens"]) == len(ids)
    assert (one["n_layers"], one["n_heads"]) == (loaded.config.n_layers, loaded.config.n_heads)
    m = torch.tensor(one["matrix"], dtype=torch.float64)
    assert torch.allclose(m.sum(dim=-1), torch.ones(len(ids), dtype=torch.float64), atol=1e-5)
    assert torch.all(m.triu(1) == 0)  # causal: nothing from later tokens
    assert float((m - torch.from_numpy(weights[3, 5]).double()).abs().max()) < 1e-6
    mean = ok(server, "/glass/attention", {"text": SPANISH, "raw": True})
    assert mean["layer"] is None and mean["head"] is None
    ref = torch.from_numpy(weights.mean(axis=(0, 1))).double()
    assert float((torch.tensor(mean["matrix"], dtype=torch.float64) - ref).abs().max()) < 1e-6
    assert mean["token"]["position"] == len(ids) - 1
    best = mean["attends_to"][0]
    assert best["weight"] == pytest.approx(float(ref[-1].max()), abs=1e-6)


@pytest.mark.slow
def test_attention_of_a_chat_prompt_equals_transformers_eager(server, loaded, hf_reference):
    hf_model, hf_tok = hf_reference
    question = "Why is the sky blue?"
    ids = hf_tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    view = ok(server, "/glass/attention", {"text": question, "layer": 7, "head": 2})
    assert view["ids"] == list(ids)  # the chat template, rendered by transformers
    before = hf_model.config._attn_implementation
    hf_model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            ref = hf_model(torch.tensor([view["ids"]]), output_attentions=True).attentions[7][0, 2]
    finally:
        hf_model.set_attn_implementation(before)
    assert float((torch.tensor(view["matrix"]) - ref.float()).abs().max()) < 1e-4


def test_lens_last_layer_is_the_prediction(server, loaded):
    tok = loaded.tokenizer
    logits = _reference_logits(loaded, tok.encode(PROMPT, add_bos=tok.add_bos), last_only=False)
    view = ok(server, "/glass/lens", {"prompt": PROMPT, "raw": True, "top": 2})
    assert len(view["layers"]) == loaded.config.n_layers + 1
    assert view["prediction"]["id"] == int(logits.argmax())
    last = view["layers"][-1]["top"]
    p = torch.softmax(logits.double(), dim=-1)
    assert [t["id"] for t in last] == p.topk(2).indices.tolist()
    assert last[0]["prob"] == pytest.approx(float(p.max()), abs=F64_PROBS)


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/glass/tokens", {"text": ""}, "text"),
        ("/glass/tokens", {}, "text"),
        ("/glass/tokens", {"text": 5}, "text"),
        ("/glass/tokens", {"text": "x" * 100_001}, "text"),
        ("/glass/attention", {"text": ""}, "text"),
        ("/glass/attention", {"text": "hola", "layer": 30}, "layer"),
        ("/glass/attention", {"text": "hola", "layer": -1}, "layer"),
        ("/glass/attention", {"text": "hola", "head": 9}, "head"),
        ("/glass/attention", {"text": "hola", "head": "2"}, "head"),
        ("/glass/attention", {"text": "hola " * 300, "raw": True}, "text"),
        ("/glass/attention", {"text": "hola", "token": "gato"}, "token"),
        ("/glass/next", {"prompt": ""}, "prompt"),
        ("/glass/next", {"prompt": "hola", "temperature": -0.5}, "temperatures"),
        ("/glass/next", {"prompt": "hola", "temperatures": []}, "temperatures"),
        ("/glass/next", {"prompt": "hola", "temperatures": [1, "hot"]}, "temperatures"),
        ("/glass/next", {"prompt": "hola", "temperature": 1, "temperatures": [1]}, "temperatures"),
        ("/glass/next", {"prompt": "hola", "top": 0}, "top"),
        ("/glass/next", {"prompt": "hola", "top_p": 1.5}, "top_p"),
        ("/glass/next", {"prompt": "hola " * 9000, "raw": True}, "prompt"),
        ("/glass/lens", {"prompt": "hola", "top": 101}, "top"),
    ],
)
def test_bad_requests_are_openai_400s(server, path, body, param):
    r = post(server, path, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_unknown_adapter_is_404(server):
    r = post(server, "/glass/tokens", {"text": "hola", "model": "gpt-4+nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_api_key_guards_the_glass_routes(loaded):
    running, stop = start_server(loaded, api_key="sesame", kv_cache_tokens=512)
    try:
        for path, body in [
            ("/glass/tokens", {"text": "hola"}),
            ("/glass/next", {"prompt": "hola"}),
            ("/glass/attention", {"text": "hola"}),
            ("/glass/lens", {"prompt": "hola"}),
        ]:
            refused = httpx.post(running.url + path, json=body, timeout=TIMEOUT)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
            good = httpx.post(
                running.url + path, json=body, timeout=TIMEOUT, headers={"Authorization": "Bearer sesame"}
            )
            assert good.status_code == 200, good.text
    finally:
        stop()


def test_glass_calls_during_generation_leave_it_unchanged(server):
    """Views run on the engine thread between steps: a greedy answer generated while they run
    is the one generated alone."""
    body = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}

    def complete() -> str:
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    alone = complete()
    results: list[str] = []
    worker = threading.Thread(target=lambda: results.append(complete()))
    worker.start()
    views = [ok(server, "/glass/next", {"prompt": SPANISH, "temperatures": [0.5, 1.0]}) for _ in range(3)]
    worker.join(TIMEOUT)
    assert results == [alone]
    assert views[0] == views[1] == views[2]
