"""The OpenAI API through the official `openai` client, checked against LLM (the static-cache path)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from llamita.sampling_params import SamplingParams

from serving_helpers import MODEL_NAME, start_server, wait_idle

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TIMEOUT = 60


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def test_chat_greedy_equals_llm_chat(client, llm_f32, server):
    r = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=16)
    assert wait_idle(server.loop)
    want = llm_f32.chat(QUESTION, SamplingParams(temperature=0, max_tokens=16))
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == len(want.prompt_token_ids)
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == MODEL_NAME and r.object == "chat.completion"


def test_chat_stream_with_usage_equals_whole_answer(client):
    kw = dict(model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=12)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # The second identical prompt found its leading blocks in the prefix cache.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0


def test_completions_prompt_forms_and_n(client, llm_f32, server):
    want = llm_f32.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=8))
    r = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", temperature=0, max_tokens=8, n=2)
    assert [c.text for c in r.choices] == [want.text, want.text] and [c.index for c in r.choices] == [0, 1]
    assert r.usage.prompt_tokens == len(want.prompt_token_ids)  # the prompt counts once
    assert r.usage.completion_tokens == 2 * len(want.token_ids)
    ids = llm_f32.encode_prompt("Once upon a time")
    r2 = client.completions.create(model=MODEL_NAME, prompt=[ids, ids], temperature=0, max_tokens=8)
    assert [c.text for c in r2.choices] == [want.text, want.text]
    streamed = client.completions.create(
        model=MODEL_NAME, prompt="Once upon a time", temperature=0, max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want.text


def test_n_with_seed_repeats(client):
    kw = dict(model=MODEL_NAME, messages=QUESTION, temperature=1.0, max_tokens=8, n=2, seed=7)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_chat_logprobs(client):
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert t.top_logprobs[0].token == t.token  # greedy picks the most likely
        assert bytes(t.bytes).decode() == t.token


def test_completions_logprobs_legacy_shape(client):
    r = client.completions.create(model=MODEL_NAME, prompt="The sky is", temperature=0, max_tokens=4, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(len(d) <= 2 for d in lp.top_logprobs) and lp.text_offset[0] == 0


def test_concurrent_streams_equal_one_at_a_time(client, server):
    prompts = ["Count to five.", "Name a color.", "Say hello in Spanish.", "What is 2+2?"]

    def ask(p: str, stream: bool) -> str:
        kw = dict(model=MODEL_NAME, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=10)
        if not stream:
            return client.chat.completions.create(**kw).choices[0].message.content
        return "".join(
            c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True) if c.choices
        )

    alone = [ask(p, False) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: ask(p, True), prompts))
    assert together == alone
    assert wait_idle(server.loop)


def test_models_and_unknown_adapter(client):
    assert [m.id for m in client.models.list()] == [MODEL_NAME]
    # Any other name answers with the served model (test_openai_clients.py); an adapter not served does not.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o+nope", messages=QUESTION, max_tokens=1)


def test_fields_that_change_nothing_are_accepted(client):
    r = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        max_tokens=1,
        user="ana",
        parallel_tool_calls=True,
        extra_body={"some_future_field": 1},
    )
    assert r.choices[0].finish_reason == "length"


def test_api_key(loaded):
    running, stop = start_server(loaded, api_key="sesame", kv_cache_tokens=512)
    try:
        bad = openai.OpenAI(base_url=running.url + "/v1", api_key="wrong", timeout=TIMEOUT, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=running.url + "/v1", api_key="sesame", timeout=TIMEOUT, max_retries=0)
        assert good.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=2).usage.completion_tokens
        import httpx

        assert httpx.get(running.url + "/health", timeout=TIMEOUT).status_code == 200  # open without a key
        assert httpx.get(running.url + "/api/tags", timeout=TIMEOUT).status_code == 401
    finally:
        stop()
