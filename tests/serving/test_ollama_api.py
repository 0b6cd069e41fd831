"""The Ollama API through the official `ollama` client."""

from __future__ import annotations

import httpx
import ollama
import pytest

from llamita.sampling_params import SamplingParams

from serving_helpers import MODEL_NAME

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, timeout=60)


def test_chat_greedy_equals_llm_chat(client, llm_f32):
    r = client.chat(model=MODEL_NAME, messages=QUESTION, options=GREEDY, stream=False)
    want = llm_f32.chat(QUESTION, SamplingParams(temperature=0, max_tokens=12))
    assert r.message.role == "assistant" and r.message.content == want.text
    assert r.done and r.done_reason == want.finish_reason
    assert r.prompt_eval_count == len(want.prompt_token_ids) and r.eval_count == len(want.token_ids)
    assert r.total_duration >= r.eval_duration > 0 and r.prompt_eval_duration > 0 and r.load_duration == 0


def test_chat_stream_equals_whole(client):
    whole = client.chat(model=MODEL_NAME, messages=QUESTION, options=GREEDY, stream=False)
    parts = list(client.chat(model=MODEL_NAME, messages=QUESTION, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].eval_count == whole.eval_count


def test_generate_raw_and_templated(client, llm_f32):
    raw = client.generate(model=MODEL_NAME, prompt="Once upon a time", raw=True, options=GREEDY)
    assert raw.response == llm_f32.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=12)).text
    streamed = "".join(
        p.response
        for p in client.generate(model=MODEL_NAME, prompt="Once upon a time", raw=True, options=GREEDY, stream=True)
    )
    assert streamed == raw.response
    chat = client.generate(model=MODEL_NAME, prompt=QUESTION[0]["content"], options=GREEDY)
    assert chat.response == client.chat(model=MODEL_NAME, messages=QUESTION, options=GREEDY).message.content


def test_num_ctx_limits_the_request(client, server):
    prompt_len = client.generate(model=MODEL_NAME, prompt="Hi", raw=True, options={"num_predict": 1}).prompt_eval_count
    r = client.generate(
        model=MODEL_NAME,
        prompt="Hi",
        raw=True,
        options={"num_ctx": prompt_len + 3, "temperature": 0, "num_predict": 50, "stop": ["zzz"]},
    )
    assert r.eval_count <= 3
    big = client.generate(model=MODEL_NAME, prompt="Hi", raw=True, options={"num_ctx": 10**6, "num_predict": 2})
    assert big.eval_count <= 2  # a window larger than the model's is clamped, not an error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=MODEL_NAME, prompt="one two three four five six", raw=True, options={"num_ctx": 2})
    assert e.value.status_code == 400


def test_without_num_ctx_the_default_window_bounds_the_answer(client, monkeypatch):
    # Ollama stops an answer at its default window (4096, or $OLLAMA_CONTEXT_LENGTH) when no
    # num_ctx or num_predict is given: a model caught in a loop does not run for an hour.
    prompt = "Once upon a time"
    prompt_len = client.generate(
        model=MODEL_NAME, prompt=prompt, raw=True, options={"num_predict": 1}
    ).prompt_eval_count
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", str(prompt_len + 6))
    r = client.generate(model=MODEL_NAME, prompt=prompt, raw=True, options={"temperature": 0})
    want = client.generate(model=MODEL_NAME, prompt=prompt, raw=True, options={"temperature": 0, "num_predict": 6})
    assert (r.response, r.eval_count, r.done_reason) == (want.response, want.eval_count, want.done_reason)
    assert r.eval_count == 6 and r.done_reason == "length"  # the default model does not end this sooner
    # A prompt longer than the default window is answered in the model's whole window.
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", str(prompt_len - 1))
    assert client.generate(model=MODEL_NAME, prompt=prompt, raw=True, options={"num_predict": 2}).eval_count == 2


def test_list_show_ps_version(client, server):
    models = client.list().models
    assert [m.model for m in models] == [MODEL_NAME] and models[0].details.quantization_level == "Q4_1"
    shown = client.show(MODEL_NAME)
    assert shown.details.family == "llama" and "im_start" in shown.template
    assert client.ps().models[0].model == MODEL_NAME
    assert httpx.get(server.url + "/api/version", timeout=10).json()["version"]


def test_unknown_model_and_unsupported_option(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama3:70b+nope", messages=QUESTION)
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=MODEL_NAME, messages=QUESTION, options={"mirostat": 2})
    assert e.value.status_code == 400 and "not supported yet" in str(e.value)
