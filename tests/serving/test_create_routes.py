"""POST /api/create in Ollama's shapes (docs/api.md of ollama/ollama: the body's fields, NDJSON
status lines ending {"status": "success"}), on an app holding only this router."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from library.fake_hub import FakeHub

from llamita.library.local import find_local
from llamita.library.modelfile import parse_modelfile
from llamita.library.store import find_manifest
from llamita.serving import create_routes
from llamita.serving.errors import install_error_handlers

from tiny_models import random_hf_weights, tiny_hf_config, write_gguf


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    cfg = tiny_hf_config()
    return write_gguf(tmp_path_factory.mktemp("create-route") / "tiny.gguf", cfg, random_hf_weights(cfg, seed=3))


@pytest.fixture
def client(tmp_path, monkeypatch) -> TestClient:
    monkeypatch.setenv("LLAMITA_HOME", str(tmp_path / "llamita"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(create_routes.router)
    return TestClient(app)


def test_create_streams_ollama_status_lines(client, gguf_file):
    body = {
        "model": "mario",
        "from": str(gguf_file),
        "system": "You are Mario.",
        "parameters": {"temperature": 0.2, "stop": ["a", "b"], "num_ctx": 2048},
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "license": ["MIT", "other"],
    }
    r = client.post("/api/create", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert all(set(line) == {"status"} for line in lines) and lines[-1] == {"status": "success"}
    m = find_manifest("mario")
    assert m.path == str(gguf_file.resolve()) and m.created_from == str(gguf_file)
    assert m.settings["parameters"] == {"temperature": 0.2, "stop": ["a", "b"], "num_ctx": 2048}
    assert m.settings["system"] == "You are Mario." and m.settings["license"] == ["MIT", "other"]
    assert m.settings["messages"] == body["messages"]


def test_stream_false_and_the_older_modelfile_form(client, gguf_file):
    text = f"FROM {gguf_file}\nPARAMETER top_k 5\nSYSTEM from the file\n"
    r = client.post("/api/create", json={"name": "old", "modelfile": text, "system": "from JSON", "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}
    settings = find_manifest("old").settings
    assert settings["parameters"] == {"top_k": 5} and settings["system"] == "from JSON"
    assert parse_modelfile(text).settings.parameters == {"top_k": 5}


@pytest.mark.parametrize(
    "body,status,words",
    [
        ({"from": "x"}, 400, "'model' is required"),
        ({"model": "m"}, 400, "'from' is required"),
        ({"model": "m", "from": "FILE", "parameters": {"temprature": 1}}, 400, "unknown parameter 'temprature'"),
        ({"model": "m", "from": "FILE", "parameters": {"top_k": "many"}}, 400, "top_k must be an integer"),
        ({"model": "m", "from": "FILE", "template": "{{ .Prompt }}"}, 400, "Go template"),
        ({"model": "m", "from": "FILE", "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
        ({"model": "m", "modelfile": "FROM FILE\nPARAMETER mirostat 2\n"}, 400, "line 2"),
        ({"model": "m", "from": "FILE", "adapters": {"/no/such/adapter": "sha256:00"}}, 400, "nothing at"),
        ({"model": "m", "from": "nobody-has-this"}, 404, "not on this machine"),
        ({"model": "m", "files": {"model.gguf": "sha256:00"}}, 400, "not supported"),
    ],
)
def test_bad_bodies_are_http_errors(client, gguf_file, body, status, words):
    body = json.loads(json.dumps(body).replace("FILE", str(gguf_file)))
    r = client.post("/api/create", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert find_manifest("m") is None  # nothing half made


def test_a_from_not_here_is_pulled_first(client, gguf_file, monkeypatch, tmp_path):
    """As Ollama's create: a repository FROM that is not on this machine is pulled (its progress
    lines first), then the model is made; a failed download ends the stream with an error and
    makes nothing; a bad ADAPTER is refused before a byte is fetched."""
    with FakeHub() as hub:
        hub.add("test/tiny-GGUF", {"tiny-Q8_0.gguf": gguf_file})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        body = {"model": "bad", "from": "hf.co/test/tiny-GGUF:Q8_0", "adapters": ["/no/such/adapter"]}
        r = client.post("/api/create", json=body)
        assert r.status_code == 400 and "nothing at" in r.json()["error"]["message"]
        assert hub.bytes_sent("test/tiny-GGUF", "tiny-Q8_0.gguf") == 0
        r = client.post("/api/create", json={"model": "mario", "from": "hf.co/test/tiny-GGUF:Q8_0", "system": "Mario"})
        assert r.status_code == 200, r.text
        lines = [json.loads(line) for line in r.text.splitlines()]
        statuses = [line["status"] for line in lines]
        assert statuses[0] == "pulling manifest" and statuses[-2:] == ["writing manifest", "success"]
        assert any(line.get("completed") == gguf_file.stat().st_size for line in lines)  # the pull's progress
        assert hub.bytes_sent("test/tiny-GGUF", "tiny-Q8_0.gguf") == gguf_file.stat().st_size
        pulled = find_local("hf.co/test/tiny-GGUF:Q8_0")
        assert pulled is not None and find_manifest("mario").path == str(pulled.path)
        assert find_manifest("mario").settings["system"] == "Mario"
        r = client.post("/api/create", json={"model": "luigi", "from": "hf.co/test/none-GGUF"})
        assert r.status_code == 200 and "error" in json.loads(r.text.splitlines()[-1])
        assert find_manifest("luigi") is None
