"""Collections over HTTP and chat answers from them, on a server whose engine 'generates' a
fixed script (so the answer does not depend on the model) while embeddings run the real
default model. The prompt the engine received is compared with the sources the response
lists; a request without "collections" must get exactly the prompt the chat template makes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from llamita.engine.prompts import encode_chat

from rag_documents import pdf_bytes
from serving_helpers import MODEL_NAME, RecordingEngine, start_server

SCRIPT = "Se llama Tobi [1]."
PERROS = "# Perros\n\nEl perro de Ana se llama Tobi y tiene tres años."
GATOS = "Los gatos duermen mucho. El gato Misu es negro."
TIMEOUT = 120


@pytest.fixture(scope="module")
def rag_server(loaded, tmp_path_factory):
    engine = RecordingEngine(loaded, SCRIPT)
    data_dir = tmp_path_factory.mktemp("rag-data")
    running, stop = start_server(loaded, engine=engine, data_dir=str(data_dir))
    running.engine, running.data_dir = engine, data_dir
    yield running
    stop()


def upload(server, name: str, files: list[tuple[str, bytes]]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/collections/{name}/files",
        timeout=TIMEOUT,
        files=[("files", (filename, data, "application/octet-stream")) for filename, data in files],
    )


def make(server, name: str) -> None:
    r = httpx.post(server.url + "/v1/collections", json={"name": name})
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def pets(rag_server):
    """A collection of two small files (and a broken PDF, refused)."""
    make(rag_server, "pets")
    broken = pdf_bytes(["never read"])[:60] + b"\x00garbage" * 10
    r = upload(
        rag_server, "pets", [("perros.md", PERROS.encode()), ("gatos.txt", GATOS.encode()), ("roto.pdf", broken)]
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_upload_indexes_readable_files_and_reports_the_broken_one(rag_server, pets):
    assert sorted(pets["added"]) == ["gatos.txt", "perros.md"]
    assert [s["file"] for s in pets["skipped"]] == ["roto.pdf"] and pets["skipped"][0]["reason"]
    shown = httpx.get(rag_server.url + "/v1/collections/pets").json()
    files = {f["name"]: f for f in shown["files"]}
    assert set(files) == {"gatos.txt", "perros.md"}
    assert files["perros.md"]["bytes"] == len(PERROS.encode()) and files["gatos.txt"]["bytes"] == len(GATOS.encode())
    assert shown["n_files"] == 2 and shown["n_chunks"] == sum(f["chunks"] for f in files.values()) == 2
    listed = httpx.get(rag_server.url + "/v1/collections").json()["data"]
    assert [c["name"] for c in listed] == ["pets"] and listed[0]["n_chunks"] == 2
    uploads = rag_server.data_dir / "collections" / "pets.files"
    assert sorted(p.name for p in uploads.iterdir()) == ["gatos.txt", "perros.md"]  # the broken one not kept


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_search_finds_the_uploaded_text(rag_server, pets, mode):
    r = httpx.post(
        rag_server.url + "/v1/collections/pets/search",
        timeout=TIMEOUT,
        json={"query": "como se llama el perro de Ana", "top": 2, "mode": mode},
    )
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    # BM25 lists only chunks that hold a query word; the dense side ranks every chunk.
    assert {h["source"] for h in hits} <= {"perros.md", "gatos.txt"} and len(hits) == (1 if mode == "bm25" else 2)
    if mode != "dense":  # the default model's embeddings are weak (docs/rag.md); BM25 must find it
        assert hits[0]["source"] == "perros.md" and hits[0]["text"] == PERROS
        assert hits[0]["location"] == "Perros"


def test_chat_sources_are_the_numbers_the_prompt_used(rag_server, pets, loaded):
    question = "¿Cómo se llama el perro de Ana?"
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "system", "content": "Sé breve."}, {"role": "user", "content": question}],
        "collections": ["pets"],
        "rag": {"top": 2, "mode": "bm25"},
    }
    r = httpx.post(rag_server.url + "/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert message["content"] == SCRIPT
    prompt = loaded.tokenizer.decode(rag_server.engine.prompts[-1])
    sources = message["sources"]
    assert [s["index"] for s in sources] == list(range(1, len(sources) + 1)) and sources[0]["source"] == "perros.md"
    for s in sources:  # [n] in the prompt is sources[n-1], with its own text
        label = f"{s['source']}, {s['location']}" if s["location"] else s["source"]
        assert f"[{s['index']}] ({label})\n{s['text']}" in prompt
    assert re.findall(r"^\[(\d+)\] \(", prompt, re.M) == [str(s["index"]) for s in sources]  # no others
    assert "Sé breve." in prompt and question in prompt
    # The answer's [1] is the file the question is about.
    assert sources[int(SCRIPT.split("[")[1][0]) - 1]["text"] == PERROS

    stream = httpx.post(rag_server.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=TIMEOUT)
    events = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")]
    last = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]][-1]
    assert last["choices"][0]["delta"]["sources"] == sources
    assert all("sources" not in e["choices"][0]["delta"] for e in events if e is not last and e["choices"])


def test_ollama_chat_with_collections(rag_server, pets):
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "¿Cómo se llama el perro?"}],
        "collections": ["pets"],
        "rag": {"mode": "bm25", "top": 1},
        "stream": False,
    }
    r = httpx.post(rag_server.url + "/api/chat", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert [s["source"] for s in r.json()["message"]["sources"]] == ["perros.md"]


def test_chat_without_collections_is_unchanged(rag_server, loaded):
    messages = [{"role": "user", "content": "Hola"}]
    r = httpx.post(
        rag_server.url + "/v1/chat/completions", json={"model": MODEL_NAME, "messages": messages}, timeout=TIMEOUT
    )
    assert rag_server.engine.prompts[-1] == encode_chat(loaded.tokenizer, messages)
    choice = r.json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": SCRIPT}
    stream = httpx.post(
        rag_server.url + "/v1/chat/completions",
        timeout=TIMEOUT,
        json={"model": MODEL_NAME, "messages": messages, "stream": True},
    )
    assert "sources" not in stream.text
    ollama = httpx.post(
        rag_server.url + "/api/chat", timeout=TIMEOUT, json={"model": MODEL_NAME, "messages": messages, "stream": False}
    ).json()
    assert ollama["message"] == {"role": "assistant", "content": SCRIPT}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"collections": ["nope"]}, 404, "name"),
        ({"collections": "pets"}, 400, "collections"),
        ({"collections": ["../pets"]}, 400, "name"),
        ({"collections": ["pets"], "rag": {"mode": "magic"}}, 400, "rag.mode"),
        ({"collections": ["pets"], "rag": {"top": 0}}, 400, "rag.top"),
        ({"rag": {"top": 3}}, 400, "rag"),
    ],
)
def test_chat_with_bad_collection_options(rag_server, pets, body, status, param):
    r = httpx.post(
        rag_server.url + "/v1/chat/completions",
        timeout=TIMEOUT,
        json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "hola"}], **body},
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize("name", ["..", ".hidden", "a b", "x" * 65, "%2E%2E%2Fetc", "-dash"])
def test_bad_collection_names_are_refused(rag_server, name):
    r = httpx.post(rag_server.url + "/v1/collections", json={"name": name})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_collection_name", r.text
    assert r.json()["error"]["param"] == "name"
    assert httpx.get(f"{rag_server.url}/v1/collections/{name}").status_code in (400, 404)
    assert not any(
        p.name.startswith(".") or ".." in p.name for p in (rag_server.data_dir / "collections").glob("*") if p.is_file()
    )


@pytest.mark.parametrize("filename", ["../escape.md", "sub/dir.md", ".hidden.md", "..\\win.md"])
def test_uploads_with_folders_in_the_name_are_refused(rag_server, pets, filename):
    r = upload(rag_server, "pets", [(filename, b"# Escape\n\ntext")])
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_file_name", r.text
    assert not list(Path(rag_server.data_dir).rglob("escape.md")) and not list(Path(rag_server.data_dir).rglob("*win*"))


def test_delete_a_file_then_the_collection(rag_server):
    make(rag_server, "temp")
    assert httpx.post(rag_server.url + "/v1/collections", json={"name": "temp"}).status_code == 409
    assert upload(rag_server, "temp", [("a.md", b"alpha bravo charlie"), ("b.md", b"delta echo")]).status_code == 200
    r = httpx.delete(rag_server.url + "/v1/collections/temp/files/a.md")
    assert r.status_code == 204, r.text
    hits = httpx.post(rag_server.url + "/v1/collections/temp/search", json={"query": "bravo", "mode": "bm25"}).json()
    assert hits["data"] == []
    assert [f["name"] for f in httpx.get(rag_server.url + "/v1/collections/temp").json()["files"]] == ["b.md"]
    assert httpx.delete(rag_server.url + "/v1/collections/temp/files/a.md").status_code == 404
    assert httpx.delete(rag_server.url + "/v1/collections/temp").status_code == 204
    assert httpx.get(rag_server.url + "/v1/collections/temp").status_code == 404
    assert not (rag_server.data_dir / "collections" / "temp.files").exists()
    assert not (rag_server.data_dir / "collections" / "temp.db").exists()


def test_upload_needs_multipart_files(rag_server, pets):
    r = httpx.post(rag_server.url + "/v1/collections/pets/files", json={"files": ["a.md"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "files"
    r = upload(rag_server, "pets", [("notes.exe", b"MZ")])
    assert r.status_code == 200 and r.json()["skipped"][0]["file"] == "notes.exe"


def test_glass_sources_explains_the_prompt_the_chat_used(rag_server, pets, loaded):
    """The glass view rebuilds the answer's prompt from the listed sources: it must be the very
    prompt the engine was given, and its shares those of rag/explain.py over that prompt."""
    from llamita.api.llm import LLM
    from llamita.rag.answer import AnswerPrompt
    from llamita.rag.explain import explain
    from llamita.serving.rag_chat import hit_of

    messages = [{"role": "user", "content": "¿Cómo se llama el perro de Ana?"}]
    r = httpx.post(
        rag_server.url + "/v1/chat/completions",
        timeout=TIMEOUT,
        json={"model": MODEL_NAME, "messages": messages, "collections": ["pets"], "rag": {"top": 2, "mode": "bm25"}},
    )
    sent = rag_server.engine.prompts[-1]
    message = r.json()["choices"][0]["message"]
    view = httpx.post(
        rag_server.url + "/glass/sources",
        timeout=TIMEOUT,
        json={"model": MODEL_NAME, "messages": messages, "sources": message["sources"], "answer": message["content"]},
    )
    assert view.status_code == 200, view.text
    view = view.json()
    assert view["prompt_tokens"] == len(sent)
    llm = LLM.from_loaded(loaded)
    answer_ids = loaded.tokenizer.encode(message["content"])
    hits = [hit_of(s) for s in message["sources"]]
    expected = explain(llm, AnswerPrompt([], hits, "es", sent), answer_ids)
    assert [s["share"] for s in view["sources"]] == pytest.approx(expected.shares, abs=1e-5)
    assert view["retrieved"] == pytest.approx(sum(expected.shares), abs=1e-5)
    assert view["retrieved"] + view["other"] == pytest.approx(1.0)
    assert len(view["per_token"]) == len(answer_ids) == len(view["tokens"])
    assert "".join(view["tokens"]) == message["content"]


def test_a_collection_whose_model_is_gone_lists_and_searches_by_bm25(rag_server, tmp_path):
    """Made by the Python API with another embedder (whose file does not exist here): listing
    it and BM25 need no model; a dense search says which model is missing."""
    from llamita.rag import Collection

    from rag_documents import HashEmbedder

    (tmp_path / "notes.md").write_text("Las llamas viven en los Andes.", encoding="utf-8")
    Collection("elsewhere", data_dir=rag_server.data_dir, create=True, embedder=HashEmbedder()).add([tmp_path])
    listed = {c["name"]: c for c in httpx.get(rag_server.url + "/v1/collections").json()["data"]}
    assert listed["elsewhere"]["n_chunks"] == 1 and listed["elsewhere"]["embedding_model"] == "hash-embedder"
    hits = httpx.post(rag_server.url + "/v1/collections/elsewhere/search", json={"query": "llamas", "mode": "bm25"})
    assert hits.json()["data"][0]["text"] == "Las llamas viven en los Andes."
    assert hits.json()["data"][0]["source"] == str(tmp_path / "notes.md")  # not an upload: its path
    dense = httpx.post(rag_server.url + "/v1/collections/elsewhere/search", json={"query": "llamas", "mode": "dense"})
    assert dense.status_code == 400 and dense.json()["error"]["code"] == "embedding_model_missing"
    assert httpx.delete(rag_server.url + "/v1/collections/elsewhere").status_code == 204


def test_openai_client_sends_collections_and_reads_sources(rag_server, pets):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=rag_server.url + "/v1", api_key="x", timeout=TIMEOUT, max_retries=0)
    r = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "¿Y el perro?"}],
        extra_body={"collections": ["pets"], "rag": {"mode": "bm25", "top": 1}},
    )
    assert r.choices[0].message.content == SCRIPT
    assert [s["source"] for s in r.choices[0].message.model_extra["sources"]] == ["perros.md"]
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        stream=True,
        messages=[{"role": "user", "content": "perro"}],
        extra_body={"collections": ["pets"], "rag": {"mode": "bm25", "top": 1}},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == SCRIPT
    assert chunks[-1].choices[0].delta.model_extra["sources"][0]["source"] == "perros.md"
