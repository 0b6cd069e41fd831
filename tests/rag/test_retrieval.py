"""Search words and fusion: Snowball stems on both sides (accents and word forms), weighted
reciprocal rank fusion against hand-computed sums, the label-free estimate of the dense
ranking's weight (a perfect embedder gets 1, a random one 0), and the schema-2 migration that
adds stems to a collection made before them without re-embedding it."""

from __future__ import annotations

import sqlite3
from fractions import Fraction

import numpy as np
import pytest

from llamita.rag import Collection
from llamita.rag.retrieval import chance_reciprocal_rank, dense_weight, pseudo_queries, reciprocal_rank_fusion
from llamita.rag.store import CollectionStore
from llamita.rag.words import stem_text, stems

from rag_documents import HashEmbedder


def test_stems_fold_accents_and_word_forms():
    # Snowball's Spanish stemmer (snowballstemmer): plural, accent and derivation share a stem
    assert stems(["Parámetros", "parametros", "parámetro"]) == ["parametr"] * 3
    assert stems(["entrenamiento", "entrenar", "entrenado"]) == ["entren"] * 3
    assert stem_text("Canción, canciones") == "cancion cancion"


def test_weighted_fusion_is_the_hand_computed_sum():
    fused = dict(reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60, weights=(1.0, 0.25)))
    expected = {1: Fraction(1, 61) + Fraction(1, 4) / 62, 2: Fraction(1, 62), 3: Fraction(1, 63) + Fraction(1, 4) / 61}
    assert fused.keys() == expected.keys()
    for item, value in expected.items():
        assert fused[item] == pytest.approx(float(value), rel=1e-15, abs=0)
    assert [i for i, _ in reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60, weights=(1.0, 0.25))] == [1, 3, 2]
    # weight 0: the first ranking's order, the other's items only after it (what it lacks)
    assert [i for i, _ in reciprocal_rank_fusion([[2, 1], [5, 1, 2, 4]], weights=(1.0, 0.0))] == [2, 1, 5, 4]
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1]], weights=(1.0, 1.0))


def test_dense_weight_formula():
    assert chance_reciprocal_rank(4, 2) == pytest.approx((1 + 1 / 2) / 4, abs=1e-15)
    assert chance_reciprocal_rank(4, 10) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, abs=1e-15)
    n, depth = 100, 50
    chance = sum(1 / r for r in range(1, 51)) / 100
    bm25 = [1, 1, 2, None]  # mean reciprocal rank 0.625
    assert dense_weight(bm25, [1, 1, 1, 1], n, depth) == 1.0  # better than BM25: capped at 1
    assert dense_weight(bm25, [None] * 4, n, depth) == 0.0
    dense = [1, 2, 4, None]  # 0.4375
    q = (0.4375 - chance) / (0.625 - chance)
    assert dense_weight(bm25, dense, n, depth) == pytest.approx(2 * q - 1, abs=1e-12)


class OracleEmbedder(HashEmbedder):
    """Each document gets its own random direction, and a query the direction of the document
    that contains it: an embedder that always finds the right passage."""

    name = "oracle"

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.documents: dict[str, np.ndarray] = {}

    def _vector(self, text):
        flat = " ".join(text.split())
        for document, vector in self.documents.items():
            if flat in document:
                return vector
        v = self.rng.standard_normal(self.dim).astype(np.float32)
        self.documents[flat] = v / np.linalg.norm(v)
        return self.documents[flat]


class RandomEmbedder(HashEmbedder):
    name = "random"

    def __init__(self):
        self.rng = np.random.default_rng(1)

    def _vector(self, text):
        v = self.rng.standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)


def synthetic_docs(folder, n_files=40):
    """n_files one-chunk files of two 10-word sentences over a 300-word made-up vocabulary."""
    rng = np.random.default_rng(2)
    vocabulary = [f"pal{i}x" for i in range(300)]
    folder.mkdir()
    for f in range(n_files):
        sentences = [" ".join(rng.choice(vocabulary, 10)).capitalize() + "." for _ in range(2)]
        (folder / f"doc{f:02d}.md").write_text(" ".join(sentences), encoding="utf-8")
    return folder


@pytest.mark.parametrize("embedder, low, high", [(OracleEmbedder, 0.99, 1.0), (RandomEmbedder, 0.0, 0.01)])
def test_a_perfect_embedder_gets_weight_1_and_a_random_one_0(tmp_path, embedder, low, high):
    collection = Collection("docs", data_dir=tmp_path / "data", create=True, embedder=embedder())
    collection.add([synthetic_docs(tmp_path / "docs")])  # measures the weight
    assert low <= float(collection.settings["dense_weight"]) <= high
    assert "40 pseudo-queries" in collection.settings["dense_weight_measure"]


def test_pseudo_queries_are_sentences_of_their_chunks():
    chunks = [(1, "Short one. This sentence has at least six words in it."), (2, "Too short."), (3, "a b c d e f g")]
    found = pseudo_queries(chunks, count=5)
    assert sorted(found) == [(1, "This sentence has at least six words in it."), (3, "a b c d e f g")]
    assert pseudo_queries(chunks, count=5) == found  # seeded: the same twice


# The schema before stems (version 1), as collections made by llamita before it were written.
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    n_chunks INTEGER NOT NULL, indexed_at REAL NOT NULL);
CREATE TABLE chunks (id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, text TEXT NOT NULL, heading TEXT NOT NULL DEFAULT '', page_start INTEGER,
    page_end INTEGER, n_tokens INTEGER NOT NULL);
CREATE INDEX chunks_by_file ON chunks(file_id, position);
CREATE TABLE vectors (chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE, embedding BLOB NOT NULL);
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    text, heading, content='chunks', content_rowid='id', tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER chunks_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading);
END;
CREATE TRIGGER chunks_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, heading) VALUES ('delete', old.id, old.text, old.heading);
END;
"""


def test_a_collection_without_stems_gets_them_on_open(tmp_path):
    path = tmp_path / "old.db"
    vector = np.arange(4, dtype="<f4").tobytes()
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1 + "PRAGMA user_version=1;")
    db.execute("INSERT INTO files VALUES (1, '/a.md', 'x', 1, 1, 0)")
    db.execute("INSERT INTO chunks VALUES (1, 1, 0, 'Los parámetros del modelo.', 'Entrenamiento', NULL, NULL, 5)")
    db.execute("INSERT INTO vectors VALUES (1, ?)", (vector,))
    db.commit()
    db.close()
    store = CollectionStore(path)
    assert [i for i, _ in store.bm25('stems : ("parametr")', 5)] == [1]
    assert [i for i, _ in store.bm25('stems : ("entren")', 5)] == [1]  # the heading's stems too
    assert [i for i, _ in store.bm25('{text heading} : ("parametros")', 5)] == [1]
    ids, matrix = store.vectors(4)
    assert ids.tolist() == [1] and matrix.tobytes() == vector  # not re-embedded
    assert "stems_pending" not in store.meta()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert db.execute("SELECT stems FROM chunks").fetchone()[0] == "entren los parametr del model"
