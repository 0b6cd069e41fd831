"""Glass-box views on the default model, each against an independent reference: transformers
on the same GGUF (logits, hidden states, eager attention weights, embeddings), the sampler's
own filter, and hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch

from llamita.engine.sampler import filter_logits
from llamita.glass.attention import attention_view, attention_weights
from llamita.glass.common import prompt_ids
from llamita.glass.embeddings import analogy_view, embed_view, token_vectors
from llamita.glass.lens import logit_lens
from llamita.glass.next_token import last_logits, next_token_view, next_token_view_from_logits
from llamita.glass.tokens import compare_view, tokenize_view
from llamita.glass.variability import variability
from llamita.sampling_params import SamplingParams

SPANISH = "El perro que persiguió al gato cruzó la calle"
ENGLISH = "The dog that chased the cat crossed the street"
PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def hf_eager(hf_reference):
    """The transformers twin computing attention the eager way, so it can return the weights."""
    model, tok = hf_reference
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    yield model, tok
    model.set_attn_implementation(before)


def hf_forward(model, ids, **kw):
    with torch.inference_mode():
        return model(torch.tensor([ids]), **kw)


def test_tokenize_ids_pieces_and_words(llm_f32, hf_reference):
    _, hf_tok = hf_reference
    view = tokenize_view(llm_f32.tokenizer, SPANISH)
    assert view["ids"] == llm_f32.tokenizer.encode(SPANISH)
    assert view["ids"] == hf_tok.encode(SPANISH, add_special_tokens=False)
    assert b"".join(llm_f32.tokenizer.token_bytes(t["id"]) for t in view["tokens"]) == SPANISH.encode()
    assert sum(t["bytes"] for t in view["tokens"]) == view["n_bytes"] == len(SPANISH.encode())
    # "ó" is its own two-byte token here: whole characters; a lone \xNN piece would not be.
    assert all(t["whole_chars"] == ("\\x" not in t["piece"]) for t in view["tokens"])
    words = {w["word"]: w["tokens"] for w in view["words"]}
    assert words["persiguió"] == len(llm_f32.tokenizer.encode(" persiguió"))
    assert view["n_words"] == 9 and view["tokens_per_word"] == pytest.approx(view["n_tokens"] / 9)
    both = compare_view(llm_f32.tokenizer, [SPANISH, ENGLISH])["texts"]
    assert both[1]["n_tokens"] == len(hf_tok.encode(ENGLISH, add_special_tokens=False))
    assert both[1]["relative_tokens"] == pytest.approx(both[1]["n_tokens"] / both[0]["n_tokens"])


def test_partial_utf8_pieces_show_bytes(llm_f32):
    # A rare character the vocabulary has no token for splits into byte tokens.
    view = tokenize_view(llm_f32.tokenizer, "𝔘")
    assert view["n_tokens"] > 1 and not any(t["whole_chars"] for t in view["tokens"])
    assert all(t["piece"].startswith("\\x") for t in view["tokens"])


@pytest.mark.slow
def test_next_token_probabilities_equal_transformers(llm_f32, hf_reference):
    hf_model, _ = hf_reference
    ids = prompt_ids(llm_f32, PROMPT, raw=False)
    ref = hf_forward(hf_model, ids).logits[0, -1].float()
    view = next_token_view(llm_f32, PROMPT, temperatures=[1.0, 0.5, 2.0, 0.0], top=10)
    ref_ids = ref.topk(10).indices.tolist()
    assert [t["id"] for t in view["tokens"]] == ref_ids
    for dist in view["distributions"]:
        t = dist["temperature"]
        if t == 0:
            assert dist["probs"][0] == 1.0 and dist["entropy_bits"] == 0.0 and dist["candidates"] == 1
            continue
        p = torch.softmax(ref / t, dim=-1)
        assert max(abs(a - b) for a, b in zip(dist["probs"], p[ref_ids].tolist())) < 1e-4
        h = float(-(p * p.clamp_min(1e-45).log()).sum())
        assert dist["entropy_nats"] == pytest.approx(h, abs=1e-3)
        assert dist["entropy_bits"] == pytest.approx(h / math.log(2), abs=2e-3)


def test_filtered_distribution_keeps_the_samplers_set(llm_f32):
    logits = last_logits(llm_f32, prompt_ids(llm_f32, PROMPT, raw=False))
    for top_k, top_p, min_p in [(5, None, None), (None, 0.9, None), (40, 0.95, 0.05), (0, 0.5, None)]:
        view = next_token_view_from_logits(
            llm_f32.tokenizer, logits, temperatures=[0.7, 1.5], top=200, top_k=top_k, top_p=top_p, min_p=min_p
        )
        params = SamplingParams(top_k=top_k or 0, top_p=1.0 if top_p is None else top_p, min_p=min_p or 0.0)
        kept = set(torch.isfinite(filter_logits(logits, params)).nonzero().flatten().tolist())
        filtered = [d for d in view["distributions"] if d["filtered"]]
        assert len(filtered) == 2
        for d in filtered:
            assert d["candidates"] == len(kept)
            shown = {t["id"] for t, p in zip(view["tokens"], d["probs"]) if p > 0}
            assert shown == kept & {t["id"] for t in view["tokens"]}
            assert sum(d["probs"]) == pytest.approx(1.0, abs=1e-5) if len(kept) <= 200 else True
            # Among the survivors, the temperature alone sets the ratios: p_i/p_j = e^((l_i-l_j)/T).
            a, b = view["tokens"][0], view["tokens"][1]
            if d["probs"][1] > 0:
                ratio = math.exp((a["logit"] - b["logit"]) / d["temperature"])
                assert d["probs"][0] / d["probs"][1] == pytest.approx(ratio, rel=1e-4)


@pytest.mark.slow
def test_logit_lens_last_and_middle_layers(llm_f32, hf_reference):
    hf_model, _ = hf_reference
    prompt = "The capital of France is"
    view = logit_lens(llm_f32, prompt, raw=True, top=3)
    ids = prompt_ids(llm_f32, prompt, raw=True)
    n = llm_f32.config.n_layers
    assert [row["layer"] for row in view["layers"]] == list(range(n + 1))
    ours = llm_f32.loaded.model(torch.tensor([ids]))[0, -1]
    out = hf_forward(hf_model, ids, output_hidden_states=True)
    assert view["prediction"]["id"] == int(ours.argmax()) == int(out.logits[0, -1].argmax())
    assert view["layers"][n]["top"][0]["id"] == view["prediction"]["id"]
    assert view["layers"][n]["final_token_rank"] == 1
    # hidden_states[i] is the residual stream after i blocks (0 = embeddings); the last entry
    # is already normed, so the middle layer is the independent check of norm + head.
    for layer in (0, n // 2):
        h = out.hidden_states[layer][0, -1]
        with torch.inference_mode():
            p = torch.softmax(hf_model.lm_head(hf_model.model.norm(h)).float(), dim=-1)
        values, idx = p.topk(3)
        row = view["layers"][layer]
        assert [t["id"] for t in row["top"]] == idx.tolist()
        assert max(abs(t["prob"] - v) for t, v in zip(row["top"], values.tolist())) < 1e-4
        assert row["final_token_prob"] == pytest.approx(float(p[view["prediction"]["id"]]), abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("text, raw", [(SPANISH, True), ("Why is the sky blue?", False)])
def test_attention_equals_transformers_eager(llm_f32, hf_eager, text, raw):
    hf_model, _ = hf_eager
    ids = prompt_ids(llm_f32, text, raw)
    ours = torch.from_numpy(attention_weights(llm_f32.loaded.model, ids))  # (L, H, S, S)
    ref = torch.stack([a[0] for a in hf_forward(hf_model, ids, output_attentions=True).attentions])
    assert ours.shape == ref.shape == (llm_f32.config.n_layers, llm_f32.config.n_heads, len(ids), len(ids))
    assert float((ours - ref).abs().max()) <= 1e-4


def test_attention_view_spanish_example(llm_f32):
    view = attention_view(llm_f32, SPANISH, raw=True, token="cruzó", to="perro", top=3)
    pieces = view["tokens"]
    q = view["token"]["position"]
    assert "".join(pieces[q - 2 : q + 1]) == " cruzó"  # the word's last token asks
    assert "".join(view["to"]["pieces"]) == " perro"
    matrix = torch.tensor(view["matrix"])
    assert torch.allclose(matrix.sum(dim=-1), torch.ones(len(pieces)), atol=1e-5)
    assert torch.all(matrix.triu(1) == 0)  # no token looks ahead
    best = view["heads_to"][0]
    w = view["weights"][best["layer"], best["head"], q, view["to"]["positions"]].sum()
    assert best["weight"] == pytest.approx(float(w)) and best["weight"] >= view["to"]["mean_weight"]
    one = attention_view(llm_f32, SPANISH, raw=True, layer=best["layer"], head=best["head"], token=q)
    assert sum(one["matrix"][q][j] for j in view["to"]["positions"]) == pytest.approx(best["weight"], abs=1e-5)


@pytest.mark.slow
def test_embedding_similarity_equals_transformers(llm_f32, hf_reference):
    hf_model, _ = hf_reference
    texts = ["I love dogs.", "I really like dogs.", "Quarterly tax filings are due in April."]
    view = embed_view(llm_f32, texts)
    refs = []
    for t in texts:
        hidden = hf_forward(hf_model, llm_f32.encode_prompt(t), output_hidden_states=True).hidden_states[-1][0]
        refs.append(torch.nn.functional.normalize(hidden.mean(dim=0), dim=0))
    ref = torch.stack(refs)
    assert torch.allclose(torch.tensor(view["similarity"]), ref @ ref.T, atol=1e-4)
    assert view["similarity"][0][1] > view["similarity"][0][2]


def test_analogy_in_token_embedding_space(llm_f32, hf_reference):
    hf_model, _ = hf_reference
    table = hf_model.model.embed_tokens.weight.float()  # transformers' own dequantized table
    vocab = llm_f32.tokenizer.vocab_size
    assert torch.allclose(token_vectors(llm_f32, range(0, vocab, 97)), table[0:vocab:97], atol=1e-6)
    view = analogy_view(llm_f32, "king", "man", "woman", top=5, expect="queen")
    words = view["words"]
    ids = [words[k]["ids"] for k in "abc"]
    assert all(len(i) == 1 for i in ids), words  # single tokens in this vocabulary
    query = table[ids[0][0]] - table[ids[1][0]] + table[ids[2][0]]
    sims = torch.nn.functional.normalize(table[:vocab], dim=1) @ torch.nn.functional.normalize(query, dim=0)
    sims[[i[0] for i in ids]] = -torch.inf
    sims[[t for t in range(vocab) if llm_f32.tokenizer.is_special(t)]] = -torch.inf
    assert [a["id"] for a in view["answers"]] == sims.topk(5).indices.tolist()
    e = view["expect"]
    assert e["rank"] == int((sims > sims[e["ids"][0]]).sum()) + 1
    assert e["out_of"] == int(torch.isfinite(sims).sum())


@pytest.mark.parametrize(
    "samples, d1, d2, jac",
    [
        ([[1, 2, 3], [1, 2, 3]], 3 / 6, 2 / 4, 1.0),
        ([[1, 2], [3, 4]], 1.0, 1.0, 0.0),
        ([[1, 2, 2]], 2 / 3, 1.0, None),
        ([[1, 2, 3], [2, 3, 4], [5]], 5 / 7, 3 / 4, (2 / 4 + 0 + 0) / 3),
        ([[], []], 0.0, 0.0, 1.0),
    ],
)
def test_variability_known_answers(samples, d1, d2, jac):
    v = variability(samples)
    assert v["distinct_1"] == pytest.approx(d1) and v["distinct_2"] == pytest.approx(d2)
    assert v["mean_jaccard"] == (None if jac is None else pytest.approx(jac))
