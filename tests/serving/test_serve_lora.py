"""Per-request LoRA adapters in the engine and the server: requests with different adapters (or
none) share the batch and each equals its own run alone with `LLM(lora=...)` (itself checked
against peft + transformers in tests/engine/test_lora_generation.py)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from llamita import LLM
from llamita.engine.llm_engine import LLMEngine
from llamita.engine.loader import load_model
from llamita.engine.lora_attach import attach_loras
from llamita.sampling_params import SamplingParams

from lora_models import make_peft_adapter
from serving_helpers import MODEL_NAME, start_server
from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

pytest.importorskip("peft")
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
PROMPT = list(range(40, 75))  # 35 tokens: two full KV blocks of 16, shareable by the prefix cache


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_lora")
    cfg = tiny_hf_config()
    sd = random_hf_weights(cfg, seed=11)
    path = write_gguf(tmp / "tiny.gguf", cfg, sd)
    a = make_peft_adapter(tmp / "style-a", cfg, sd, seed=21)
    b = make_peft_adapter(tmp / "style-b", cfg, sd, seed=22, r=2, alpha=4.0)
    singles = {None: LLM(path, dtype="float32", device="cpu")}
    for folder in (a, b):
        singles[folder.name] = LLM(path, dtype="float32", device="cpu", lora=folder)
    loaded = load_model(path, dtype="float32", device="cpu")
    assert attach_loras(loaded.model, loaded.config, [a, b], combine=False) == ["style-a", "style-b"]
    return loaded, singles


def alone(singles, adapter, prompt=PROMPT, params=GREEDY):
    return singles[adapter].generate(prompt_token_ids=prompt, params=params)


def run_all(engine: LLMEngine, out: dict[str, list[int]]) -> dict[str, list[int]]:
    while engine.has_unfinished():
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.token_ids)
    return out


def test_engine_batch_of_adapters_equals_single_runs(tiny):
    loaded, singles = tiny
    engine = LLMEngine(loaded, kv_cache_tokens=1024)
    # The base request goes first: its prompt blocks are in the prefix cache when the adapter
    # requests arrive with the same prompt, and they must not be reused (other keys and values).
    engine.add_request("base", PROMPT, GREEDY)
    outs = {o.request_id: list(o.token_ids) for o in engine.step()}
    engine.add_request("a", PROMPT, GREEDY, adapter="style-a")
    for o in engine.step():
        outs.setdefault(o.request_id, []).extend(o.token_ids)
    engine.add_request("b", PROMPT[:20], GREEDY, adapter="style-b")
    engine.add_request("a2", PROMPT, GREEDY, adapter="style-a")
    run_all(engine, outs)
    assert outs["base"] == alone(singles, None).token_ids
    assert outs["a"] == outs["a2"] == alone(singles, "style-a").token_ids
    assert outs["b"] == alone(singles, "style-b", PROMPT[:20]).token_ids
    assert len({tuple(outs[k]) for k in ("base", "a", "b")}) == 3
    # a2 shared a's two prompt blocks (same adapter); a never took the base's.
    assert engine.requests == {} and engine.blocks.stats.hit_tokens == 32
    with pytest.raises(Exception, match="no LoRA adapter named 'nope'"):
        engine.add_request("x", PROMPT, GREEDY, adapter="nope")


def test_server_concurrent_requests_with_different_adapters(tiny):
    loaded, singles = tiny
    running, stop = start_server(loaded, kv_cache_tokens=1024)
    try:
        models = httpx.get(running.url + "/v1/models").json()["data"]
        assert [m["id"] for m in models] == [MODEL_NAME, f"{MODEL_NAME}+style-a", f"{MODEL_NAME}+style-b"]
        assert models[1]["parent"] == MODEL_NAME
        # Ollama clients list models from /api/tags (and /api/ps): the adapters are there too.
        for route in ("/api/tags", "/api/ps"):
            tags = httpx.get(running.url + route).json()["models"]
            assert [m["name"] for m in tags] == [m["id"] for m in models], route
            assert [m["details"]["parent_model"] for m in tags] == ["", MODEL_NAME, MODEL_NAME], route

        bodies = [
            {"model": f"{MODEL_NAME}+style-a", "prompt": PROMPT, "max_tokens": 8, "temperature": 0},
            {"model": MODEL_NAME, "lora": "style-b", "prompt": PROMPT, "max_tokens": 8, "temperature": 0},
            {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 8, "temperature": 0},
        ]

        async def all_at_once() -> list[dict]:
            async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
                replies = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))
            return [r.json() for r in replies]

        got = [r["choices"][0]["text"] for r in asyncio.run(all_at_once())]
        params = SamplingParams(temperature=0, max_tokens=8)
        assert got == [
            alone(singles, "style-a", params=params).text,
            alone(singles, "style-b", params=params).text,
            alone(singles, None, params=params).text,
        ]
        assert len(set(got)) == 3

        chat = httpx.post(
            running.url + "/v1/chat/completions",
            timeout=60,
            json={
                "model": f"{MODEL_NAME}+style-b",
                "max_tokens": 5,
                "temperature": 0,
                "messages": [{"role": "user", "content": "hola"}],
            },
        )
        want = (
            singles["style-b"]
            .chat([{"role": "user", "content": "hola"}], SamplingParams(temperature=0, max_tokens=5))
            .text
        )
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == want

        missing = httpx.post(running.url + "/v1/completions", json={"model": f"{MODEL_NAME}+nope", "prompt": "x"})
        assert missing.status_code == 404
        # A name that asks for no adapter answers with the base, named as the base.
        other = httpx.post(
            running.url + "/v1/completions",
            timeout=60,
            json={"model": "gpt-4o", "prompt": PROMPT, "max_tokens": 8, "temperature": 0},
        ).json()
        assert other["choices"][0]["text"] == alone(singles, None, params=params).text and other["model"] == MODEL_NAME
        assert "style-a" in missing.json()["error"]["message"]  # the 404 lists the adapters served
        clash = httpx.post(
            running.url + "/v1/completions", json={"model": f"{MODEL_NAME}+style-a", "lora": "style-b", "prompt": "x"}
        )
        assert clash.status_code == 400
        ollama = httpx.post(
            running.url + "/api/generate",
            timeout=60,
            json={
                "model": f"{MODEL_NAME}+style-a",
                "prompt": "the cat",
                "raw": True,
                "stream": False,
                "options": {"temperature": 0, "num_predict": 6},
            },
        )
        want = singles["style-a"].generate("the cat", SamplingParams(temperature=0, max_tokens=6)).text
        assert ollama.status_code == 200 and ollama.json()["response"] == want
    finally:
        stop()


def test_glass_views_show_the_adapter_a_request_names(tiny):
    """/glass/next, /glass/lens and /glass/attention with `lora` (or `model` base+NAME) show
    the model with that adapter: each equals the view of `LLM(lora=...)` loaded alone, and
    differs from the base model's."""
    import numpy as np

    from llamita.glass.attention import attention_view
    from llamita.glass.lens import logit_lens
    from llamita.glass.next_token import next_token_view

    loaded, singles = tiny
    text = "the cat sat on"
    running, stop = start_server(loaded, kv_cache_tokens=1024)
    try:

        def post(route: str, body: dict) -> dict:
            r = httpx.post(running.url + route, timeout=60, json={"raw": True, **body})
            assert r.status_code == 200, r.text
            return r.json()

        for adapter, pick in [
            (None, {}),
            ("style-a", {"lora": "style-a"}),
            ("style-b", {"model": f"{MODEL_NAME}+style-b"}),
        ]:
            llm = singles[adapter]
            got = post("/glass/next", {"prompt": text, "top": 5, **pick})
            want = next_token_view(llm, text, raw=True, top=5)
            assert [t["id"] for t in got["tokens"]] == [t["id"] for t in want["tokens"]], adapter
            np.testing.assert_allclose(got["distributions"][0]["probs"], want["distributions"][0]["probs"], atol=1e-5)
            got = post("/glass/lens", {"prompt": text, "top": 2, **pick})
            want = logit_lens(llm, text, raw=True, top=2)
            assert [[t["id"] for t in s["top"]] for s in got["layers"]] == [
                [t["id"] for t in s["top"]] for s in want["layers"]
            ], adapter
            got = post("/glass/attention", {"text": text, "layer": 1, **pick})
            np.testing.assert_allclose(got["matrix"], attention_view(llm, text, raw=True, layer=1)["matrix"], atol=1e-5)
        # The adapters change what the views show (else the above proves nothing).
        base = post("/glass/attention", {"text": text, "layer": 1})["matrix"]
        assert (
            np.abs(
                np.array(post("/glass/attention", {"text": text, "layer": 1, "lora": "style-a"})["matrix"])
                - np.array(base)
            ).max()
            > 1e-3
        )
        assert (
            post("/glass/next", {"prompt": text, "top": 5, "lora": "style-a"})["distributions"][0]["probs"]
            != post("/glass/next", {"prompt": text, "top": 5})["distributions"][0]["probs"]
        )
        missing = httpx.post(running.url + "/glass/next", json={"prompt": text, "lora": "nope"})
        assert missing.status_code == 404
    finally:
        stop()


def test_web_page_chats_and_looks_inside_with_the_chosen_adapter(tiny, browser, tmp_path):
    """The page offers the base and each adapter; an answer written with an adapter equals
    `LLM(lora=...)`'s, is saved with that model and says so, the conversation reopens with it,
    and the "Inside the model" panel shows the model with that adapter. Last in this module: the
    browser's event loop would break the asyncio.run above."""
    from llamita.glass.next_token import next_token_view

    loaded, singles = tiny
    question, text = "hola", "the cat sat on"
    greedy = SamplingParams(temperature=0, max_tokens=5)
    want = {k: singles[k].chat([{"role": "user", "content": question}], greedy).text for k in (None, "style-b")}
    assert want[None] != want["style-b"]  # else the page's choice would prove nothing
    probs = {
        k: next_token_view(singles[k], text, raw=True, top=10)["distributions"][0]["probs"] for k in (None, "style-b")
    }
    assert max(abs(a - b) for a, b in zip(probs[None], probs["style-b"])) > 1e-3
    running, stop = start_server(loaded, kv_cache_tokens=1024, data_dir=str(tmp_path))
    try:
        page = browser.new_page(locale="en-US")
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        sent: list[dict] = []
        page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/glass/next") else None)
        page.set_default_timeout(30_000)
        page.goto(running.url + "/")
        page.wait_for_selector("#model-choice:not([hidden])")
        assert page.locator("#model option").all_inner_texts() == [f"{MODEL_NAME} (base)", "style-a", "style-b"]
        assert page.input_value("#model") == MODEL_NAME

        def ask() -> dict:
            page.fill("#temperature", "0")
            page.fill("#max_tokens", "5")
            page.fill("#message-input", question)
            page.click("#send")
            page.wait_for_selector(".message.assistant:not(.streaming) .thumb-up")
            cid = page.evaluate("localStorage.getItem('llamita.conversation')")
            return httpx.get(f"{running.url}/ui/conversations/{cid}").json()

        page.select_option("#model", f"{MODEL_NAME}+style-b")
        styled = ask()
        assert styled["messages"][1]["content"] == want["style-b"]
        assert styled["messages"][1]["model"] == f"{MODEL_NAME}+style-b"
        assert styled["params"]["model"] == f"{MODEL_NAME}+style-b"
        assert page.locator(".message.assistant .meta .model").inner_text() == "style-b"

        page.reload()  # the conversation comes back with its adapter chosen
        page.wait_for_selector("#conversation-list li.active")
        assert page.input_value("#model") == f"{MODEL_NAME}+style-b"

        page.click("#glass summary")
        page.fill("#glass-text", text)
        page.click("#glass-run")
        page.wait_for_selector("#glass-next li")
        shown = [float(s.rstrip("%")) for s in page.locator("#glass-next .prob").all_inner_texts()]
        assert shown == pytest.approx([100 * p for p in probs["style-b"]], abs=0.051)
        assert sent[-1]["model"] == f"{MODEL_NAME}+style-b"

        page.select_option("#model", MODEL_NAME)  # the panel looks again, with the base model
        page.wait_for_function(
            "want => [...document.querySelectorAll('#glass-next .prob')].every("
            "(el, k) => Math.abs(parseFloat(el.textContent) - want[k]) <= 0.051)",
            arg=[100 * p for p in probs[None]],
        )
        assert "model" not in sent[-1] or sent[-1]["model"] == MODEL_NAME
        page.click("#new-conversation")
        page.select_option("#model", MODEL_NAME)
        plain = ask()
        assert plain["messages"][1]["content"] == want[None] and plain["messages"][1]["model"] == MODEL_NAME
        assert errors == []
        page.close()
    finally:
        stop()
