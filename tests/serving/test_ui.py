"""The web chat's store (SQLite) and its /ui/ routes over a live server."""

from __future__ import annotations

import glob
import json
import re
import sqlite3
from pathlib import Path

import httpx
import pytest
import tomllib

import llamita
from llamita.serving.store import DB_NAME, SCHEMA_VERSION, ChatStore, default_data_dir
from llamita.serving.ui_routes import STATIC_DIR

from serving_helpers import start_server

TIMEOUT = 30


@pytest.fixture
def store(tmp_path) -> ChatStore:
    return ChatStore(tmp_path)


def _conversation_with_answer(store: ChatStore) -> tuple[str, int]:
    c = store.create_conversation("Capitals", "Answer briefly.", {"temperature": 0.1, "top_k": 40})
    store.add_message(c["id"], "user", "Capital of France?")
    answer = store.add_message(c["id"], "assistant", "Paris.", tokens_per_second=31.5)
    return c["id"], answer["id"]


def test_store_round_trip(store):
    cid, answer_id = _conversation_with_answer(store)
    got = store.get_conversation(cid)
    assert got["title"] == "Capitals" and got["system_prompt"] == "Answer briefly."
    assert got["params"] == {"temperature": 0.1, "top_k": 40}
    assert [(m["role"], m["content"]) for m in got["messages"]] == [
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
    ]
    assert got["messages"][1]["tokens_per_second"] == 31.5 and got["messages"][1]["id"] == answer_id
    assert got["messages"][0]["tokens_per_second"] is None and got["messages"][0]["feedback"] is None
    assert store.update_conversation(cid, title="Europe")
    assert store.get_conversation(cid)["title"] == "Europe"
    assert [c["id"] for c in store.list_conversations()] == [cid]
    assert store.get_conversation("nope") is None and not store.update_conversation("nope", title="x")
    assert store.add_message("nope", "user", "hi") is None
    with pytest.raises(ValueError):
        store.add_message(cid, "robot", "hi")
    # A new store over the same folder reads the same data (the schema is not made twice).
    assert ChatStore(store.data_dir).get_conversation(cid)["title"] == "Europe"


def test_list_most_recently_changed_first(store):
    first = store.create_conversation("first")["id"]
    second = store.create_conversation("second")["id"]
    store.add_message(first, "user", "again")
    assert [c["id"] for c in store.list_conversations()] == [first, second]


def test_delete_cascades_to_messages_and_feedback(store):
    cid, answer_id = _conversation_with_answer(store)
    store.set_feedback(answer_id, 1)
    assert store.delete_conversation(cid) and not store.delete_conversation(cid)
    db = sqlite3.connect(store.path)
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 0


def test_new_feedback_replaces_the_old(store):
    cid, answer_id = _conversation_with_answer(store)
    assert store.set_feedback(answer_id, 1, "good")
    assert store.set_feedback(answer_id, -1, "wrong after all")
    assert store.get_conversation(cid)["messages"][1]["feedback"] == {"rating": -1, "comment": "wrong after all"}
    assert sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 1
    assert not store.set_feedback(999, 1)
    with pytest.raises(ValueError):
        store.set_feedback(answer_id, 2)


def test_export_is_openai_fine_tuning_jsonl(store):
    cid, first_answer = _conversation_with_answer(store)
    store.add_message(cid, "user", "And of Spain?")
    second_answer = store.add_message(cid, "assistant", "Madrid.")["id"]
    store.add_message(cid, "user", "Thanks")  # after the rated answers: never exported
    store.set_feedback(first_answer, 1, "")
    store.set_feedback(second_answer, -1, "too short")
    lines = list(store.export_feedback())
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    rows = [json.loads(line) for line in lines]
    assert rows[0] == {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ],
        "rating": 1,
        "comment": "",
    }
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": "Madrid."}
    assert len(rows[1]["messages"]) == 5 and rows[1]["rating"] == -1 and rows[1]["comment"] == "too short"


def test_wal_mode_schema_version_and_a_second_connection(store):
    cid, _ = _conversation_with_answer(store)
    other = sqlite3.connect(store.path)  # another reader, as another thread or process would be
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert other.execute("SELECT title FROM conversations WHERE id = ?", (cid,)).fetchone()[0] == "Capitals"
    assert other.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2
    store.add_message(cid, "user", "more")  # committed at once: the open reader sees it
    assert other.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 3


def test_answers_keep_their_model_and_the_export_says_it(store):
    c = store.create_conversation("Styles", params={"temperature": 0.0, "model": "smol+style-a"})
    store.add_message(c["id"], "user", "hi")
    styled = store.add_message(c["id"], "assistant", "Ahoy.", model="smol+style-a")
    store.add_message(c["id"], "user", "again")
    plain = store.add_message(c["id"], "assistant", "Hello.")
    assert store.get_conversation(c["id"])["params"]["model"] == "smol+style-a"
    assert [m["model"] for m in store.get_conversation(c["id"])["messages"]] == [None, "smol+style-a", None, None]
    store.set_feedback(styled["id"], 1)
    store.set_feedback(plain["id"], -1)
    rows = [json.loads(line) for line in store.export_feedback()]
    assert rows[0]["model"] == "smol+style-a" and "model" not in rows[1]


# The chat store of llamita before answers kept their model (schema version 1), as it wrote files.
_SCHEMA_V1 = """
CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL, system_prompt TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE messages (id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE, role TEXT NOT NULL,
    content TEXT NOT NULL, tokens_per_second REAL, created_at REAL NOT NULL);
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
CREATE TABLE feedback (message_id INTEGER NOT NULL UNIQUE REFERENCES messages(id) ON DELETE CASCADE,
    rating INTEGER NOT NULL CHECK (rating IN (1, -1)), comment TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL);
INSERT INTO conversations VALUES ('old', 'Before', '', '{"temperature": 0.7}', 1.0, 2.0);
INSERT INTO messages VALUES (1, 'old', 'user', 'Hola', NULL, 1.0), (2, 'old', 'assistant', 'Buenas.', 12.5, 2.0);
INSERT INTO feedback VALUES (2, 1, 'bien', 3.0);
PRAGMA user_version = 1;
"""


def test_a_version_1_file_upgrades_in_place_and_keeps_its_data(tmp_path):
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript(_SCHEMA_V1)
    db.close()
    store = ChatStore(tmp_path)
    assert sqlite3.connect(store.path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    old = store.get_conversation("old")
    assert [(m["content"], m["model"], m["tokens_per_second"]) for m in old["messages"]] == [
        ("Hola", None, None),
        ("Buenas.", None, 12.5),
    ]
    assert old["messages"][1]["feedback"] == {"rating": 1, "comment": "bien"}
    assert store.add_message("old", "assistant", "Otra.", model="m+a")["model"] == "m+a"
    assert json.loads(next(store.export_feedback())) == {
        "messages": [{"role": "user", "content": "Hola"}, {"role": "assistant", "content": "Buenas."}],
        "rating": 1,
        "comment": "bien",
    }
    assert ChatStore(tmp_path).get_conversation("old")["messages"][2]["model"] == "m+a"  # upgraded once
    cited = store.add_message("old", "assistant", "Tobi [1].", sources=[{"index": 1, "text": "Tobi"}])
    assert ChatStore(tmp_path).get_conversation("old")["messages"][3]["sources"] == [{"index": 1, "text": "Tobi"}]
    assert "sources" not in old["messages"][0] and cited["sources"][0]["index"] == 1


def test_newer_schema_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        ChatStore(tmp_path)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "llamita"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".local" / "share" / "llamita"


# The routes, over the live test server.


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def test_page_and_static_files(http):
    page = http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text
    for name, kind in (("app.js", "javascript"), ("markdown.js", "javascript"), ("style.css", "text/css")):
        r = http.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"], name
    assert http.get("/static/nothing.js").status_code == 404


def test_every_page_asset_is_served_and_packaged(http):
    """Each file the page links to answers 200, and pyproject's package-data ships every file
    under static/ (its globs do not reach into subfolders on their own: vendor/)."""
    linked = re.findall(r'(?:src|href)="(/static/[^"]+)"', http.get("/").text)
    assert "/static/vendor/marked.umd.js" in linked and "/static/vendor/purify.min.js" in linked
    for path in linked:
        assert http.get(path).status_code == 200, path
    package = Path(llamita.__file__).parent
    pyproject = package.parents[1] / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not a source checkout")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["llamita"]
    shipped = {Path(f) for p in patterns for f in glob.glob(str(package / p))}
    assert {f for f in STATIC_DIR.rglob("*") if f.is_file()} <= shipped


def test_conversation_routes(http):
    r = http.post(
        "/ui/conversations",
        json={"title": "Hola", "system_prompt": "Sé breve.", "params": {"temperature": 0.7, "top_p": 0.9, "top_k": 40}},
    )
    assert r.status_code == 201
    cid = r.json()["id"]
    assert cid in [c["id"] for c in http.get("/ui/conversations").json()["data"]]
    user = http.post(f"/ui/conversations/{cid}/messages", json={"role": "user", "content": "¿Qué tal?"})
    answer = http.post(
        f"/ui/conversations/{cid}/messages",
        json={"role": "assistant", "content": "Bien.", "tokens_per_second": 42, "model": "smol"},
    )
    assert user.status_code == answer.status_code == 201
    answer_id = answer.json()["id"]
    r = http.put(f"/ui/messages/{answer_id}/feedback", json={"rating": 1, "comment": "ok"})
    assert r.status_code == 200 and r.json() == {"message_id": answer_id, "rating": 1, "comment": "ok"}
    r = http.patch(f"/ui/conversations/{cid}", json={"title": "Saludo"})
    assert r.status_code == 200 and r.json()["title"] == "Saludo" and r.json()["system_prompt"] == "Sé breve."
    got = http.get(f"/ui/conversations/{cid}").json()
    assert [m["content"] for m in got["messages"]] == ["¿Qué tal?", "Bien."]
    assert got["messages"][1]["feedback"] == {"rating": 1, "comment": "ok"}
    assert got["messages"][1]["tokens_per_second"] == 42 and got["messages"][1]["model"] == "smol"
    r = http.patch(f"/ui/conversations/{cid}", json={"params": {"temperature": 0.2, "model": "smol+style"}})
    assert r.status_code == 200 and r.json()["params"] == {"temperature": 0.2, "model": "smol+style"}

    export = http.get("/ui/feedback.jsonl")
    assert export.status_code == 200 and "attachment" in export.headers["content-disposition"]
    rows = [json.loads(line) for line in export.text.splitlines()]
    mine = [row for row in rows if row["messages"][-1]["content"] == "Bien."]
    assert mine and mine[-1]["messages"][0] == {"role": "system", "content": "Sé breve."}
    assert mine[-1]["model"] == "smol"

    assert http.delete(f"/ui/conversations/{cid}").status_code == 204
    assert http.get(f"/ui/conversations/{cid}").status_code == 404


def test_truncate_from_a_message(http):
    """Regenerate and edit-and-resend: a message and every later one go, with their ratings."""
    cid = http.post("/ui/conversations", json={"title": "t"}).json()["id"]
    ids = [
        http.post(f"/ui/conversations/{cid}/messages", json={"role": role, "content": str(k)}).json()["id"]
        for k, role in enumerate(["user", "assistant", "user", "assistant"])
    ]
    assert http.put(f"/ui/messages/{ids[3]}/feedback", json={"rating": 1}).status_code == 200
    other = http.post("/ui/conversations", json={"title": "other"}).json()["id"]
    assert http.delete(f"/ui/conversations/{other}/messages/{ids[2]}").status_code == 404  # not its message
    assert http.delete(f"/ui/conversations/{cid}/messages/{ids[2]}").status_code == 204
    assert [m["id"] for m in http.get(f"/ui/conversations/{cid}").json()["messages"]] == ids[:2]
    assert not any(
        json.loads(line)["messages"][-1]["content"] == "3" for line in http.get("/ui/feedback.jsonl").text.splitlines()
    )
    assert http.delete(f"/ui/conversations/{cid}/messages/{ids[2]}").status_code == 404


def test_favicon(http):
    r = http.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    assert 'rel="icon" href="/static/favicon.svg"' in http.get("/").text


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_route_errors(http):
    cid = http.post("/ui/conversations", json={}).json()["id"]
    user_id = http.post(f"/ui/conversations/{cid}/messages", json={"role": "user", "content": "x"}).json()["id"]
    answer_id = http.post(f"/ui/conversations/{cid}/messages", json={"role": "assistant", "content": "y"}).json()["id"]

    assert _error(http.get("/ui/conversations/nope"), 404)["code"] == "conversation_not_found"
    _error(http.patch("/ui/conversations/nope", json={"title": "x"}), 404)
    _error(http.delete("/ui/conversations/nope"), 404)
    _error(http.post("/ui/conversations/nope/messages", json={"role": "user", "content": "x"}), 404)
    _error(http.put("/ui/messages/999999/feedback", json={"rating": 1}), 404)

    assert _error(http.put(f"/ui/messages/{answer_id}/feedback", json={"rating": 5}), 400)["param"] == "rating"
    _error(http.put(f"/ui/messages/{answer_id}/feedback", json={"rating": True}), 400)
    _error(http.put(f"/ui/messages/{answer_id}/feedback", json={}), 400)
    _error(http.put(f"/ui/messages/{user_id}/feedback", json={"rating": 1}), 400)  # not an answer
    _error(http.put("/ui/messages/abc/feedback", json={"rating": 1}), 400)
    assert "not valid JSON" in _error(http.post("/ui/conversations", content=b"{nope"), 400)["message"]
    _error(http.post("/ui/conversations", json=["a list"]), 400)
    _error(http.post(f"/ui/conversations/{cid}/messages", content=b"{"), 400)
    assert (
        _error(http.post(f"/ui/conversations/{cid}/messages", json={"role": "robot", "content": "x"}), 400)["param"]
        == "role"
    )
    _error(http.post(f"/ui/conversations/{cid}/messages", json={"role": "user"}), 400)
    _error(
        http.post(
            f"/ui/conversations/{cid}/messages", json={"role": "assistant", "content": "x", "tokens_per_second": "fast"}
        ),
        400,
    )
    assert _error(http.patch(f"/ui/conversations/{cid}", json={"params": {"temprature": 1}}), 400)["param"] == "params"
    assert (
        _error(http.patch(f"/ui/conversations/{cid}", json={"params": {"top_k": 0.5}}), 400)["param"] == "params.top_k"
    )
    assert _error(http.patch(f"/ui/conversations/{cid}", json={"params": {"model": 3}}), 400)["param"] == "params.model"
    assert (
        _error(
            http.post(f"/ui/conversations/{cid}/messages", json={"role": "assistant", "content": "x", "model": ["a"]}),
            400,
        )["param"]
        == "model"
    )


def test_ui_routes_need_the_api_key_but_the_page_does_not(loaded, tmp_path):
    running, stop = start_server(loaded, api_key="sesame", kv_cache_tokens=256, data_dir=str(tmp_path))
    try:
        assert httpx.get(running.url + "/", timeout=TIMEOUT).status_code == 200
        assert httpx.get(running.url + "/static/app.js", timeout=TIMEOUT).status_code == 200
        _error(httpx.get(running.url + "/ui/conversations", timeout=TIMEOUT), 401)
        _error(httpx.get(running.url + "/ui/feedback.jsonl", timeout=TIMEOUT), 401)
        r = httpx.get(running.url + "/ui/conversations", headers={"Authorization": "Bearer sesame"}, timeout=TIMEOUT)
        assert r.status_code == 200 and r.json() == {"data": []}
        assert (tmp_path / DB_NAME).exists()
    finally:
        stop()
