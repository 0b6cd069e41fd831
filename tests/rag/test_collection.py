"""Collections with a stand-in embedder: accent-insensitive search, incremental re-indexing,
unreadable files skipped, chunk budgets, and the refusal to mix embedding models."""

from __future__ import annotations

import sqlite3

import pytest

from llamita.errors import CollectionError, InvalidParameterError
from llamita.rag import Collection
from llamita.rag.chunker import chunk_blocks
from llamita.rag.readers import markdown_blocks
from llamita.rag.retrieval import fts_query, reciprocal_rank_fusion
from llamita.rag.store import delete_collection, list_collections

from rag_documents import write_corrupt_pdf, write_encrypted_pdf, write_pdf


def make(tmp_path, embedder, name="docs"):
    return Collection(name, data_dir=tmp_path / "data", create=True, embedder=embedder)


def snapshot(collection):
    """(file name, position, text) of every chunk: what a collection holds."""
    return sorted((c["source"].rsplit("/", 1)[-1], c["position"], c["text"]) for c in collection.store.all_chunks())


def bm25_sources(tmp_path, embedder, texts: list[str]):
    """A collection of one file per text (a.md, b.md, ...), and a function: query -> the names of
    the files BM25 finds, best first."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for letter, text in zip("abcdefgh", texts):
        (docs / f"{letter}.md").write_text(text, encoding="utf-8")
    collection = make(tmp_path, embedder)
    collection.add([docs])
    return lambda query: [h.source.rsplit("/", 1)[-1] for h in collection.search(query, 3, mode="bm25")]


def test_search_ignores_accents_both_ways(tmp_path, hash_embedder):
    sources = bm25_sources(
        tmp_path,
        hash_embedder,
        [
            "La inteligencia artificial está transformando el mundo.",
            "Una cancion sin tildes sobre el perro.",
            "Nada que ver: recetas de cocina.",
        ],
    )
    for query, expected in (("esta transformando", "a.md"), ("canción", "b.md"), ("INTELIGENCIA", "a.md")):
        assert sources(query)[:1] == [expected], query


def test_bm25_finds_other_word_forms_and_ranks_the_exact_form_first(tmp_path, hash_embedder):
    sources = bm25_sources(
        tmp_path,
        hash_embedder,
        [
            "El modelo ajusta cada parámetro durante el entrenamiento.",
            "Los parámetros se entrenan con datos.",
            "Recetas de cocina sin relación.",
        ],
    )
    assert sources("parametros") == ["b.md", "a.md"]  # the same word (accents aside) first, then its stem
    assert sources("parámetro") == ["a.md", "b.md"]
    assert set(sources("entrenar")) == {"a.md", "b.md"}  # no chunk says "entrenar": stems only


def test_incremental_reindex_changes_deletes_and_adds(tmp_path, hash_embedder):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# A\n\nalpha one.\n\nalpha two.", encoding="utf-8")
    (docs / "sub" / "b.txt").write_text("bravo original text.", encoding="utf-8")
    (docs / "c.md").write_text("charlie, soon deleted.", encoding="utf-8")
    collection = make(tmp_path, hash_embedder)
    first = collection.add([docs])
    assert (len(first.added), first.updated, first.removed) == (3, [], [])
    with sqlite3.connect(collection.store.path) as db:
        a_rows = db.execute(
            "SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id WHERE f.path LIKE '%a.md'"
        ).fetchall()

    (docs / "sub" / "b.txt").write_text("bravo changed text.", encoding="utf-8")
    (docs / "c.md").unlink()
    (docs / "d.html").write_text("<h1>Delta</h1><p>delta new.</p>", encoding="utf-8")
    second = collection.add([docs])
    assert [p.rsplit("/", 1)[-1] for p in second.added] == ["d.html"]
    assert [p.rsplit("/", 1)[-1] for p in second.updated] == ["b.txt"]
    assert [p.rsplit("/", 1)[-1] for p in second.removed] == ["c.md"]
    assert [p.rsplit("/", 1)[-1] for p in second.unchanged] == ["a.md"]

    # Exactly what a fresh index of the folder holds, and the unchanged file untouched.
    fresh = make(tmp_path, hash_embedder, "fresh")
    fresh.add([docs])
    assert snapshot(collection) == snapshot(fresh)
    with sqlite3.connect(collection.store.path) as db:
        assert (
            db.execute(
                "SELECT c.id FROM chunks c JOIN files f ON f.id = c.file_id WHERE f.path LIKE '%a.md'"
            ).fetchall()
            == a_rows
        )
        assert db.execute("SELECT count(*) FROM vectors").fetchone()[0] == len(snapshot(fresh))
    assert collection.search("charlie deleted", 5, mode="bm25") == []
    assert collection.search("changed", 1)[0].source.endswith("b.txt")
    # The FTS index follows the chunks table exactly.
    with sqlite3.connect(collection.store.path) as db:
        db.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")


def test_unreadable_files_are_reported_and_skipped(tmp_path, hash_embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "good.pdf", ["Page one about llamas.", "Page two about alpacas."])
    write_corrupt_pdf(docs / "torn.pdf")
    write_encrypted_pdf(docs / "locked.pdf", ["secret"])
    (docs / "notes.md").write_text("plain notes", encoding="utf-8")
    collection = make(tmp_path, hash_embedder)
    report = collection.add([docs, tmp_path / "missing"])
    skipped = {p.rsplit("/", 1)[-1]: why for p, why in report.skipped}
    assert set(skipped) == {"torn.pdf", "locked.pdf", "missing"}
    assert "password-protected" in skipped["locked.pdf"] and "damaged" in skipped["torn.pdf"]
    assert sorted(f["path"].rsplit("/", 1)[-1] for f in collection.files()) == ["good.pdf", "notes.md"]
    hit = collection.search("alpacas", 1, mode="bm25")[0]
    assert (hit.page_start, hit.page_end, hit.location) == (1, 2, "pp. 1-2")


def test_chunks_follow_headings_and_stay_within_budget():
    count = lambda text: len(text.split())  # noqa: E731 - a word is a token here
    text = (
        "# Uno\n\n"
        + "\n\n".join(f"Frase {i} del párrafo con varias palabras más." for i in range(12))
        + "\n\n# Dos\n\nOtra sección corta."
    )
    chunks = chunk_blocks(markdown_blocks(text), count, budget=40, overlap=10)
    assert all(c.n_tokens <= 42 for c in chunks)
    assert chunks[0].text.startswith("# Uno") and chunks[-1].heading == "Dos"
    # A chunk cut for size starts with the end of the one before.
    assert chunks[1].text.split("\n\n")[0] in chunks[0].text
    assert [c.position for c in chunks] == list(range(len(chunks)))
    with pytest.raises(InvalidParameterError):
        chunk_blocks([], count, budget=40, overlap=30)


def test_collection_refuses_another_embedding_model(tmp_path, hash_embedder):
    docs = tmp_path / "a.md"
    docs.write_text("x y z", encoding="utf-8")
    make(tmp_path, hash_embedder).add([docs])
    other = type(hash_embedder)()
    other.name = "other-model.gguf"
    with pytest.raises(CollectionError, match="indexed with hash-embedder"):
        Collection("docs", data_dir=tmp_path / "data", embedder=other)
    with pytest.raises(InvalidParameterError, match="chunk_tokens"):
        make(tmp_path, hash_embedder).add([docs], chunk_tokens=99)


def test_list_and_delete_collections(tmp_path, hash_embedder):
    make(tmp_path, hash_embedder, "uno")
    make(tmp_path, hash_embedder, "dos")
    assert list_collections(tmp_path / "data") == ["dos", "uno"]
    assert delete_collection("uno", tmp_path / "data") and not delete_collection("uno", tmp_path / "data")
    with pytest.raises(CollectionError, match="no collection 'uno'"):
        Collection("uno", data_dir=tmp_path / "data")
    with pytest.raises(CollectionError, match="bad collection name"):
        Collection("../etc", data_dir=tmp_path / "data")


def test_query_parsing_and_fusion():
    # words only, FTS5 syntax and function words dropped; exact words in text and heading, their
    # Snowball stems (snowballstemmer's Spanish: entrenamiento -> entren) in the stems column
    assert (
        fts_query('¿Qué es el "entrenamiento" OR NOT x*?')
        == '{text heading} : ("entrenamiento" OR "x") OR stems : ("entren" OR "x")'
    )
    assert (
        fts_query("de la") == '{text heading} : ("de" OR "la") OR stems : ("de" OR "la")'
    )  # only function words: keep them
    assert fts_query("¿?") is None
    assert reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60)[0][0] == 1
