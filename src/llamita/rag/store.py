"""One document collection in one SQLite file: its files (path, content hash), their chunks,
an FTS5 index over the chunks for BM25, and each chunk's embedding.

Same standard as the chat store, through the same code (llamita/database.py): one connection
per call, WAL so readers never wait for the writer, and every change in one transaction. A file's chunks, their
vectors and its hash are written together, so a process killed while indexing leaves each file
either wholly indexed (with the hash that lets the next run skip it) or absent.

Vectors are float32 BLOBs searched by exact inner product in the process (rag/retrieval.py),
not through the sqlite-vec extension: Python's sqlite3 is often built without loadable
extensions (pyenv's and python.org's macOS builds, and this project's CI), where sqlite-vec
cannot load at all; its vec0 tables are a brute-force scan too."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from llamita import database
from llamita.config import default_data_dir
from llamita.errors import CollectionError
from llamita.rag.chunker import Chunk
from llamita.rag.words import stem_text

SCHEMA_VERSION = 2
FOLDER = "collections"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Column weights of the BM25 score (text, heading, stems): an exact word counts twice what a
# shared stem does, so *parámetros* ranks a chunk that says *parámetros* above one that says
# *parámetro*; the heading path counts half, as it repeats over a section's chunks. (Stems at
# 0.25, 0.5, 1 and 2 were compared on the dev half of the question set: docs/rag.md.)
BM25_WEIGHTS = (1.0, 0.5, 0.5)

# remove_diacritics 2: "esta" finds "está" (and "cancion" "canción"), in Spanish and beyond.
# FTS5 cannot stem, so stems come in a column of their own, computed when a chunk is stored.
_FTS = """
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    text, heading, stems, content='chunks', content_rowid='id', tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER chunks_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text, heading, stems) VALUES (new.id, new.text, new.heading, new.stems);
END;
CREATE TRIGGER chunks_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, heading, stems)
    VALUES ('delete', old.id, old.text, old.heading, old.stems);
END;
"""

_SCHEMA = (
    """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,          -- absolute
    sha256 TEXT NOT NULL,               -- of the file's bytes: unchanged files are skipped
    size INTEGER NOT NULL,
    n_chunks INTEGER NOT NULL,
    indexed_at REAL NOT NULL            -- Unix seconds
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,          -- order in the file
    text TEXT NOT NULL,
    heading TEXT NOT NULL DEFAULT '',   -- "Chapter > Section" above the chunk
    page_start INTEGER,                 -- PDF pages, 1-based; NULL for other files
    page_end INTEGER,
    n_tokens INTEGER NOT NULL,
    stems TEXT NOT NULL DEFAULT ''      -- Snowball stems of heading and text (rag/words.py)
);
CREATE INDEX chunks_by_file ON chunks(file_id, position);
-- Kept apart from the text so loading every vector reads only vector pages.
CREATE TABLE vectors (
    chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL             -- float32 little-endian, unit length
);
"""
    + _FTS
)

# Version 2 (stems): the column and the new FTS table come in SQL; the stems themselves are
# Python's (Snowball), so the step leaves a mark that CollectionStore() acts on: fill every
# chunk's stems and rebuild the index, in one transaction (a crash before it commits leaves
# the mark, and the next open does it again). Vectors are untouched: no re-embedding.
_MIGRATIONS = {
    2: """
DROP TRIGGER chunks_insert;
DROP TRIGGER chunks_delete;
DROP TABLE chunks_fts;
ALTER TABLE chunks ADD COLUMN stems TEXT NOT NULL DEFAULT '';
"""
    + _FTS
    + """
INSERT INTO meta VALUES ('stems_pending', '1');
"""
}


def collections_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where collections live: `data_dir/collections` (default: the per-user data folder the
    chat store uses, $XDG_DATA_HOME/llamita)."""
    return Path(data_dir if data_dir is not None else default_data_dir()) / FOLDER


def collection_path(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    if not _NAME.fullmatch(name):
        raise CollectionError(
            f"bad collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return collections_dir(data_dir) / f"{name}.db"


def list_collections(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    folder = collections_dir(data_dir)
    return sorted(p.stem for p in folder.glob("*.db")) if folder.is_dir() else []


def delete_collection(name: str, data_dir: str | os.PathLike[str] | None = None) -> bool:
    """Deletes the collection's database (and its WAL files); False when there is none."""
    path = collection_path(name, data_dir)
    if not path.exists():
        return False
    for suffix in ("-wal", "-shm", ""):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return True


class CollectionStore:
    """The SQLite database of one collection (created when `create`, else it must exist)."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        if not path.exists():
            if not create:
                raise CollectionError(
                    f"there is no collection '{path.stem}' (in {path.parent}); "
                    f"create it with `llamita index add {path.stem} FILES...`"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
        database.prepare(
            path,
            _SCHEMA,
            SCHEMA_VERSION,
            _MIGRATIONS,
            lambda found: CollectionError(
                f"{path} has schema version {found}; this llamita reads up to {SCHEMA_VERSION}: upgrade llamita"
            ),
        )
        if "stems_pending" in self.meta():
            self._fill_stems()

    def _fill_stems(self) -> None:
        """Stems for every chunk of a collection made before they existed, and the FTS index
        rebuilt over them (one transaction)."""
        with self._write() as db:
            rows = db.execute("SELECT id, heading, text FROM chunks").fetchall()
            db.executemany(
                "UPDATE chunks SET stems = ? WHERE id = ?", [(_stems(r["heading"], r["text"]), r["id"]) for r in rows]
            )
            db.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')")
            db.execute("DELETE FROM meta WHERE key = 'stems_pending'")

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return database.connect(self.path)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with database.write(self.path) as db:
            yield db
            # Every write of chunks moves the generation on, so a reader's cached vectors know they
            # are stale (set_meta writes settings only, and leaves it).
            db.execute(
                "INSERT INTO meta VALUES ('generation', '1') ON CONFLICT(key) "
                "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )

    # -- settings ----------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        with self._connect() as db:
            return {r["key"]: r["value"] for r in db.execute("SELECT key, value FROM meta")}

    def set_meta(self, values: dict[str, str]) -> None:
        """Writes settings; chunks and vectors are untouched, so the generation stays."""
        with database.write(self.path) as db:
            db.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    def generation(self) -> int:
        with self._connect() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    # -- files -------------------------------------------------------------------------
    def files(self) -> list[dict[str, Any]]:
        """Every indexed file: path, sha256, size, n_chunks, indexed_at; by path."""
        with self._connect() as db:
            return [
                dict(r) for r in db.execute("SELECT path, sha256, size, n_chunks, indexed_at FROM files ORDER BY path")
            ]

    def put_file(self, path: str, sha256: str, size: int, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Replaces the file's chunks and vectors (vectors: (len(chunks), dim) float32) in one
        transaction."""
        if len(vectors) != len(chunks):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        blobs = np.ascontiguousarray(vectors, dtype="<f4")
        with self._write() as db:
            _delete_file(db, path)
            file_id = db.execute(
                "INSERT INTO files (path, sha256, size, n_chunks, indexed_at) VALUES (?, ?, ?, ?, ?)",
                (path, sha256, size, len(chunks), time.time()),
            ).lastrowid
            for chunk, vector in zip(chunks, blobs):
                chunk_id = db.execute(
                    "INSERT INTO chunks (file_id, position, text, heading, page_start, page_end, n_tokens, stems) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        file_id,
                        chunk.position,
                        chunk.text,
                        chunk.heading,
                        chunk.page_start,
                        chunk.page_end,
                        chunk.n_tokens,
                        _stems(chunk.heading, chunk.text),
                    ),
                ).lastrowid
                db.execute("INSERT INTO vectors VALUES (?, ?)", (chunk_id, vector.tobytes()))

    def remove_files(self, paths: Sequence[str]) -> None:
        with self._write() as db:
            for path in paths:
                _delete_file(db, path)

    # -- reading chunks ----------------------------------------------------------------
    def chunks(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """id -> {id, text, heading, page_start, page_end, n_tokens, position, source}."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._connect() as db:
            rows = db.execute(
                f"SELECT c.id, c.text, c.heading, c.page_start, c.page_end, c.n_tokens, c.position, "
                f"f.path AS source FROM chunks c JOIN files f ON f.id = c.file_id WHERE c.id IN ({marks})",
                list(ids),
            ).fetchall()
        return {r["id"]: dict(r) for r in rows}

    def all_chunks(self) -> list[dict[str, Any]]:
        """Every chunk (source, position, text, heading, pages), in file and position order."""
        with self._connect() as db:
            return [
                dict(r)
                for r in db.execute(
                    "SELECT f.path AS source, c.position, c.text, c.heading, c.page_start, c.page_end, c.n_tokens "
                    "FROM chunks c JOIN files f ON f.id = c.file_id ORDER BY f.path, c.position"
                )
            ]

    def bm25(self, match: str, limit: int, weights: Sequence[float] = BM25_WEIGHTS) -> list[tuple[int, float]]:
        """(chunk id, BM25 score, higher is better) for an FTS5 MATCH expression, best first;
        weights: of the text, heading and stems columns."""
        text, heading, stemmed = (float(w) for w in weights)
        with self._connect() as db:
            rows = db.execute(
                f"SELECT rowid, bm25(chunks_fts, {text!r}, {heading!r}, {stemmed!r}) AS s "
                "FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY s LIMIT ?",
                (match, limit),
            ).fetchall()
        return [(r[0], -r[1]) for r in rows]  # FTS5's bm25() is negated: lower is better

    def vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids (n,) int64, embeddings (n, dim) float32)."""
        with self._connect() as db:
            rows = db.execute("SELECT chunk_id, embedding FROM vectors ORDER BY chunk_id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
        return ids, matrix

    def chunk_texts(self) -> list[tuple[int, str]]:
        """(chunk id, text) of every chunk."""
        with self._connect() as db:
            return [(r[0], r[1]) for r in db.execute("SELECT id, text FROM chunks")]

    def counts(self) -> tuple[int, int, int]:
        """(files, chunks, tokens in the chunks)."""
        with self._connect() as db:
            files = db.execute("SELECT count(*) FROM files").fetchone()[0]
            chunks, tokens = db.execute("SELECT count(*), coalesce(sum(n_tokens), 0) FROM chunks").fetchone()
        return files, chunks, tokens


def _stems(heading: str, text: str) -> str:
    return stem_text(f"{heading}\n{text}")


def _delete_file(db: sqlite3.Connection, path: str) -> None:
    # Chunks first, by statement, so the FTS trigger sees each one go (the vectors cascade).
    db.execute("DELETE FROM chunks WHERE file_id IN (SELECT id FROM files WHERE path = ?)", (path,))
    db.execute("DELETE FROM files WHERE path = ?", (path,))
