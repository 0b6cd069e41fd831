"""The web chat's memory: conversations, their messages and feedback on answers, in SQLite.

One connection per call (routes run in threads; sqlite3 connections are not shared between
them), WAL mode so readers never wait for the writer, every write in one transaction: the
conventions of llamita/database.py, which document collections share."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from llamita import database

# Defined in config (document collections share the folder); serving/app.py imports it from here.
from llamita.config import default_data_dir  # noqa: F401

DB_NAME = "llamita.db"
SCHEMA_VERSION = 3
# Each step takes a database from the version before it to its own; older files upgrade in place.
_MIGRATIONS = {2: "ALTER TABLE messages ADD COLUMN model TEXT;", 3: "ALTER TABLE messages ADD COLUMN sources TEXT;"}
ROLES = ("system", "user", "assistant")

_SCHEMA = """
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL DEFAULT '{}',  -- JSON object: temperature, top_p, top_k, max_tokens, model
    created_at REAL NOT NULL,           -- Unix seconds
    updated_at REAL NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    tokens_per_second REAL,
    created_at REAL NOT NULL,
    model TEXT,                         -- the answer's model ("<base>+NAME" with an adapter); NULL if unknown
    sources TEXT                        -- JSON list: an answer from documents' numbered sources; else NULL
);
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
CREATE TABLE feedback (
    message_id INTEGER NOT NULL UNIQUE REFERENCES messages(id) ON DELETE CASCADE,
    rating INTEGER NOT NULL CHECK (rating IN (1, -1)),
    comment TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
"""


class ChatStore:
    """Conversations, messages and feedback in `data_dir/llamita.db` (created on first use)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / DB_NAME
        database.prepare(
            self.path,
            _SCHEMA,
            SCHEMA_VERSION,
            _MIGRATIONS,
            lambda found: RuntimeError(
                f"{self.path} has schema version {found}; this llamita reads up to {SCHEMA_VERSION}: "
                f"upgrade llamita or use another --data-dir"
            ),
        )

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return database.connect(self.path)

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return database.write(self.path)

    # Conversations

    def create_conversation(
        self, title: str = "", system_prompt: str = "", params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        now = time.time()
        cid = uuid.uuid4().hex
        with self._write() as db:
            db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
                (cid, title, system_prompt, json.dumps(params or {}), now, now),
            )
        conversation = self.get_conversation(cid)
        assert conversation is not None
        return conversation

    def list_conversations(self) -> list[dict[str, Any]]:
        """Every conversation without its messages, the most recently changed first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM conversations ORDER BY updated_at DESC, rowid DESC").fetchall()
        return [_conversation(r) for r in rows]

    def get_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        """The conversation with its messages (each with its feedback), or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            if row is None:
                return None
            messages = db.execute(
                "SELECT m.*, f.rating, f.comment FROM messages m LEFT JOIN feedback f ON f.message_id = m.id "
                "WHERE m.conversation_id = ? ORDER BY m.id",
                (conversation_id,),
            ).fetchall()
        return {**_conversation(row), "messages": [_message(m) for m in messages]}

    def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> bool:
        """Changes the given fields; False when there is no such conversation."""
        changes = {
            k: v
            for k, v in (
                ("title", title),
                ("system_prompt", system_prompt),
                ("params", None if params is None else json.dumps(params)),
            )
            if v is not None
        }
        sets = "".join(f"{name} = ?, " for name in changes)
        with self._write() as db:
            cursor = db.execute(
                f"UPDATE conversations SET {sets}updated_at = ? WHERE id = ?",
                (*changes.values(), time.time(), conversation_id),
            )
        return cursor.rowcount == 1

    def delete_conversation(self, conversation_id: str) -> bool:
        """Deletes it with its messages and their feedback; False when there is none."""
        with self._write() as db:
            cursor = db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        return cursor.rowcount == 1

    # Messages and feedback

    def add_message(
        self,
        conversation_id: str,
        role: str,
        content: str,
        tokens_per_second: float | None = None,
        model: str | None = None,
        sources: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any] | None:
        """The stored message, or None when there is no such conversation. sources: an answer
        from documents' numbered sources, as the chat response listed them."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        now = time.time()
        with self._write() as db:
            found = db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))
            if found.rowcount == 0:
                return None
            cursor = db.execute(
                "INSERT INTO messages (conversation_id, role, content, tokens_per_second, "
                "created_at, model, sources) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    role,
                    content,
                    tokens_per_second,
                    now,
                    model,
                    None if sources is None else json.dumps(sources, ensure_ascii=False),
                ),
            )
            row = db.execute(
                "SELECT *, NULL AS rating, NULL AS comment FROM messages WHERE id = ?", (cursor.lastrowid,)
            ).fetchone()
        return _message(row)

    def truncate_conversation(self, conversation_id: str, message_id: int) -> bool:
        """Deletes the message and every later one of its conversation (with their feedback): the
        page's regenerate and edit-and-resend. False when the conversation has no such message."""
        with self._write() as db:
            found = db.execute(
                "SELECT 1 FROM messages WHERE id = ? AND conversation_id = ?", (message_id, conversation_id)
            ).fetchone()
            if found is None:
                return False
            db.execute("DELETE FROM messages WHERE conversation_id = ? AND id >= ?", (conversation_id, message_id))
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (time.time(), conversation_id))
        return True

    def message_role(self, message_id: int) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT role FROM messages WHERE id = ?", (message_id,)).fetchone()
        return None if row is None else row["role"]

    def set_feedback(self, message_id: int, rating: int, comment: str = "") -> bool:
        """Rates a message +1 or -1, replacing an earlier rating; False when there is no such message."""
        if rating not in (1, -1):
            raise ValueError(f"rating must be 1 or -1, got {rating!r}")
        with self._write() as db:
            if db.execute("SELECT 1 FROM messages WHERE id = ?", (message_id,)).fetchone() is None:
                return False
            db.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?) ON CONFLICT(message_id) DO UPDATE SET "
                "rating = excluded.rating, comment = excluded.comment, created_at = excluded.created_at",
                (message_id, rating, comment, time.time()),
            )
        return True

    def export_feedback(self) -> Iterator[str]:
        """One JSON line per rated message, in OpenAI's fine-tuning shape: {"messages": the
        conversation (system prompt first) up to and including the rated answer, "rating", "comment"},
        and "model" when the page said which model (or base+adapter) gave the answer."""
        with self._connect() as db:
            rated = db.execute(
                "SELECT f.message_id, f.rating, f.comment, m.conversation_id, m.model, c.system_prompt "
                "FROM feedback f JOIN messages m ON m.id = f.message_id "
                "JOIN conversations c ON c.id = m.conversation_id ORDER BY f.message_id"
            ).fetchall()
            for r in rated:
                history = db.execute(
                    "SELECT role, content FROM messages WHERE conversation_id = ? AND id <= ? ORDER BY id",
                    (r["conversation_id"], r["message_id"]),
                ).fetchall()
                messages = [{"role": "system", "content": r["system_prompt"]}] if r["system_prompt"] else []
                messages += [{"role": m["role"], "content": m["content"]} for m in history]
                line = {"messages": messages, "rating": r["rating"], "comment": r["comment"]}
                if r["model"] is not None:
                    line["model"] = r["model"]
                yield json.dumps(line, ensure_ascii=False) + "\n"


def _conversation(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "system_prompt": row["system_prompt"],
        "params": json.loads(row["params"]),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _message(row: sqlite3.Row) -> dict[str, Any]:
    feedback = None if row["rating"] is None else {"rating": row["rating"], "comment": row["comment"]}
    return {
        "id": row["id"],
        "conversation_id": row["conversation_id"],
        "role": row["role"],
        "content": row["content"],
        "tokens_per_second": row["tokens_per_second"],
        "model": row["model"],
        "created_at": row["created_at"],
        "feedback": feedback,
        **({"sources": json.loads(row["sources"])} if row["sources"] else {}),
    }
