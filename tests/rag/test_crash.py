"""A SIGKILL while indexing leaves the collection usable: every file that was committed is
whole (its chunks, vectors and FTS rows), the one being written is absent, and the next `add`
finishes the job."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamita.rag import Collection

from rag_documents import write_pdf

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src"
N_FILES = 40

# The child indexes slowly (a pause per embedding call) so the parent can kill it mid-way.
CHILD = """
import sys, time
sys.path[:0] = [{tests!r}]
from rag_documents import HashEmbedder
from llamita.rag import Collection

class Slow(HashEmbedder):
    def embed_documents(self, texts):
        time.sleep(0.05)
        return super().embed_documents(texts)

Collection("docs", data_dir={data!r}, create=True, embedder=Slow()).add([{docs!r}])
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_while_indexing_leaves_committed_files_whole(tmp_path, hash_embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(N_FILES):
        if i % 5 == 0:
            write_pdf(docs / f"f{i:02d}.pdf", [f"page one of file {i}", f"page two of file {i}"])
        else:
            (docs / f"f{i:02d}.md").write_text(
                f"# File {i}\n\n" + "\n\n".join(f"paragraph {j} of file {i} with words" for j in range(30)),
                encoding="utf-8",
            )
    data = tmp_path / "data"
    code = CHILD.format(tests=str(TESTS), data=str(data), docs=str(docs))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    db_path = data / "collections" / "docs.db"
    deadline = time.monotonic() + 60
    committed = 0
    try:
        while committed < 5 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
            if db_path.exists():
                try:
                    with sqlite3.connect(db_path, timeout=1) as db:
                        committed = db.execute("SELECT count(*) FROM files").fetchone()[0]
                except sqlite3.OperationalError:  # the schema is not there yet
                    pass
        assert child.poll() is None, "the indexer finished before it could be killed: slow it down"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL

    collection = Collection("docs", data_dir=data, embedder=hash_embedder)
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
        n_files = db.execute("SELECT count(*) FROM files").fetchone()[0]
        rows = db.execute(
            "SELECT f.n_chunks, count(c.id), count(v.chunk_id) FROM files f "
            "LEFT JOIN chunks c ON c.file_id = f.id LEFT JOIN vectors v ON v.chunk_id = c.id "
            "GROUP BY f.id"
        ).fetchall()
    assert 5 <= n_files < N_FILES
    assert all(n == chunks == vectors for n, chunks, vectors in rows)
    # Every committed file holds exactly what a clean index of it holds.
    clean = Collection("clean", data_dir=data, create=True, embedder=hash_embedder)
    clean.add([Path(f["path"]) for f in collection.files()])
    snapshot = lambda c: sorted((x["source"], x["position"], x["text"]) for x in c.store.all_chunks())  # noqa: E731
    assert snapshot(collection) == snapshot(clean)
    assert collection.search("paragraph of file", 3)

    report = collection.add([docs])
    assert len(report.unchanged) == n_files and len(report.added) == N_FILES - n_files
    assert len(collection.files()) == N_FILES
