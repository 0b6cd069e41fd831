"""What real OpenAI clients send (issue 30): content as a list of parts, the developer role,
base URLs without /v1, any model name, X-Api-Key and CORS preflights. Answers are checked
against LLM.chat (the static-cache path) on the equivalent plain messages."""

from __future__ import annotations

import httpx
import openai
import pytest
from starlette.testclient import TestClient

from llamita.sampling_params import SamplingParams

from serving_helpers import MODEL_NAME, ScriptedEngine, start_server, wait_idle

QUESTION = "What is the capital of France?"
TIMEOUT = 60
GREEDY = SamplingParams(temperature=0, max_tokens=12)


def _client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, timeout=TIMEOUT, max_retries=0)


def _answer(client: openai.OpenAI, messages: list[dict], model: str = MODEL_NAME) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12)


def test_content_parts_and_developer_role_equal_plain_messages(server, llm_f32):
    client = _client(server.url + "/v1")
    parts = [
        {"role": "developer", "content": [{"type": "text", "text": "Answer in one word."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello."}, {"type": "text", "text": QUESTION}]},
    ]
    r = _answer(client, parts)
    assert wait_idle(server.loop)
    # OpenAI: developer is the newer name of system. Text parts join with a newline (vLLM, llama.cpp).
    want = llm_f32.chat(
        [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hello.\n" + QUESTION}],
        GREEDY,
    )
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == len(want.prompt_token_ids)
    # Assistant and tool turns take parts too.
    history = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
        {"role": "user", "content": [{"type": "text", "text": "And of Spain?"}]},
    ]
    plain = [
        {"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]}
        for m in history
    ]
    assert _answer(client, history).choices[0].message.content == llm_f32.chat(plain, GREEDY).text


def test_a_part_the_model_cannot_read_is_a_400_naming_it(server):
    client = _client(server.url + "/v1")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError) as e:
        _answer(client, [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}])
    error = e.value.body
    assert error["param"] == "messages[0].content[1]" and "image_url" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_base_url_without_v1(server):
    with_v1, without = _client(server.url + "/v1"), _client(server.url)
    messages = [{"role": "user", "content": QUESTION}]
    assert (
        _answer(without, messages).choices[0].message.content == _answer(with_v1, messages).choices[0].message.content
    )
    assert [m.id for m in without.models.list()] == [m.id for m in with_v1.models.list()] == [MODEL_NAME]
    kw = dict(model=MODEL_NAME, prompt="Once upon a time", temperature=0, max_tokens=6)
    assert without.completions.create(**kw).choices[0].text == with_v1.completions.create(**kw).choices[0].text
    a = without.embeddings.create(model=MODEL_NAME, input="hola").data[0].embedding
    assert a == with_v1.embeddings.create(model=MODEL_NAME, input="hola").data[0].embedding


def test_any_model_name_answers_with_the_served_model(server):
    client = _client(server.url + "/v1")
    messages = [{"role": "user", "content": QUESTION}]
    other = _answer(client, messages, model="gpt-4o")
    assert other.model == MODEL_NAME  # the response names the model that answered
    assert other.choices[0].message.content == _answer(client, messages).choices[0].message.content
    # A name asking for a LoRA adapter the server lacks never silently runs the base.
    with pytest.raises(openai.NotFoundError) as e:
        _answer(client, messages, model=f"{MODEL_NAME}+nope")
    assert e.value.body["code"] == "model_not_found"


def test_strict_model_names_keep_the_404(server):
    state = server.app.state.llamita
    state.strict_model_names = True  # as `llamita serve --strict-model-names` sets it
    try:
        with pytest.raises(openai.NotFoundError) as e:
            _answer(_client(server.url + "/v1"), [{"role": "user", "content": "hi"}], model="gpt-4o")
        assert e.value.body["code"] == "model_not_found" and MODEL_NAME in e.value.body["message"]
        assert _answer(_client(server.url + "/v1"), [{"role": "user", "content": "hi"}]).model == MODEL_NAME
    finally:
        state.strict_model_names = False


def test_serve_help_documents_strict_model_names():
    from typer.testing import CliRunner

    from llamita.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--strict-model-names" in result.output


@pytest.fixture(scope="module")
def keyed(loaded, tmp_path_factory):
    """An app with an API key and one allowed browser origin over a scripted engine."""
    from llamita.serving.app import create_app
    from llamita.serving.engine_loop import EngineLoop

    loop = EngineLoop(ScriptedEngine(loaded, "Hola."))
    loop.start()
    app = create_app(
        loop,
        MODEL_NAME,
        api_key="sesame",
        data_dir=tmp_path_factory.mktemp("keyed"),
        cors_origins=("http://localhost:3000",),
    )
    with TestClient(app) as client:
        yield client
    loop.stop()


def test_x_api_key_is_accepted_like_bearer(keyed):
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert keyed.post("/v1/chat/completions", json=body).status_code == 401
    assert keyed.post("/v1/chat/completions", json=body, headers={"X-Api-Key": "wrong"}).status_code == 401
    ok = keyed.post("/v1/chat/completions", json=body, headers={"X-Api-Key": "sesame"})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "Hola."
    assert keyed.post("/chat/completions", json=body, headers={"Authorization": "Bearer sesame"}).status_code == 200


def test_cors_preflight_needs_no_key(keyed):
    preflight = {
        "Origin": "http://localhost:3000",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type",
    }
    r = keyed.options("/v1/chat/completions", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "x-api-key" in r.headers["access-control-allow-headers"].lower()


def test_preflight_without_cors_is_answered_but_grants_nothing(loaded):
    running, stop = start_server(loaded, api_key="sesame", engine=ScriptedEngine(loaded, "x"))
    try:
        r = httpx.options(
            running.url + "/v1/chat/completions",
            timeout=10,
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert r.status_code == 204 and "access-control-allow-origin" not in r.headers
        # A plain OPTIONS (no preflight) still needs the key.
        assert httpx.options(running.url + "/v1/chat/completions", timeout=10).status_code == 401
    finally:
        stop()


def test_models_retrieve(server):
    for client in (_client(server.url + "/v1"), _client(server.url)):
        assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-4o")  # listing what exists is exact, unlike answering
