"""RAG with the real default model: retrieval quality on the Spanish question set (recall@5,
hybrid beside BM25 and dense alone), and the CLI end to end: index, list, show, search --json,
ask with numbered sources, rm.

Embedding all five course texts takes the default model a minute on 2 cores, so the test indexes
the two shortest and asks their questions; benchmarks/rag_recall.py gives the figures for the
whole set (docs/rag.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamita.cli.main import app
from llamita.rag import Collection
from llamita.rag.answer import build_prompt, citations, detect_language

DATA = Path(__file__).resolve().parents[1] / "data" / "rag"
runner = CliRunner()


def normalize(text: str) -> str:
    return " ".join(text.split())


SHORT_TEXTS = ("llama31_potencial_limitaciones.txt", "capitulo1_fundamentos_llama.md")


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Collection:
    """The two shortest course texts indexed with the default model (~25 chunks)."""
    collection = Collection("course", data_dir=tmp_path_factory.mktemp("rag"), create=True)
    report = collection.add([DATA / "course" / name for name in SHORT_TEXTS])
    assert not report.skipped and len(report.added) == 2
    return collection


def recall_at(collection: Collection, questions: list[dict], k: int, mode: str) -> float:
    found = 0
    for q in questions:
        texts = [normalize(h.text) for h in collection.search(q["question"], k, mode=mode)]
        found += any(normalize(p) in t for p in q["passages"] for t in texts)
    return found / len(questions)


def test_question_set_is_well_formed():
    questions = json.loads((DATA / "questions_es.json").read_text(encoding="utf-8"))
    assert len(questions) >= 40
    texts = {p.name: normalize(p.read_text(encoding="utf-8")) for p in (DATA / "course").iterdir()}
    for q in questions:
        assert normalize(q["passages"][0]) in texts[q["source"]], q["id"]


def test_recall_at_5(course, capsys):
    questions = [
        q for q in json.loads((DATA / "questions_es.json").read_text(encoding="utf-8")) if q["source"] in SHORT_TEXTS
    ]
    figures = {mode: recall_at(course, questions, 5, mode) for mode in ("hybrid", "bm25", "dense")}
    with capsys.disabled():
        print(f"\nrecall@5 over {len(questions)} questions: " + ", ".join(f"{m} {v:.3f}" for m, v in figures.items()))
    # Floors that catch regressions (1.0, 1.0 and 0.23 measured). SmolLM2-135M's mean-pooled
    # states find passages far worse than BM25 does, so the collection's measured dense weight is
    # well under 1 (0.25 for these 25 chunks, 0 for all 141) and hybrid keeps BM25's answers
    # (docs/rag.md: the figures on all 95 questions).
    assert figures["bm25"] >= 0.9
    assert figures["hybrid"] >= 0.9
    assert float(course.settings["dense_weight"]) < 0.5
    assert figures["dense"] > 5 / course.store.counts()[1]  # better than picking chunks at random


def test_unaccented_queries_find_accented_text(course):
    hits = course.search("cuantos parametros y capas tiene", 5, mode="bm25")
    assert any("Parámetros: 8 mil millones" in h.text for h in hits)


def test_prompt_numbers_are_the_sources(course):
    hits = course.search("¿Qué es la cuantización?", 4)
    prompt = build_prompt(course.embedder.llm, "¿Qué es la cuantización?", hits)
    user = prompt.messages[1]["content"]
    assert prompt.language == "es" and user.startswith("Fuentes:") and "Pregunta: ¿Qué es la cuantización?" in user
    for number, hit in enumerate(prompt.sources, start=1):
        assert f"[{number}] ({Path(hit.source).name}" in user
        assert (
            user.index(f"[{number}] (") < user.index(hit.text) < user.index(f"[{number + 1}] (")
            if number < len(prompt.sources)
            else user.index(hit.text) > user.index(f"[{number}] (")
        )
    assert citations("Sí [1], y también [2, 3] y [9].", 3) == ([1, 2, 3], [9])
    assert detect_language("What is RAG?") == "en" and detect_language("que es la atencion") == "es"


def test_cli_index_search_ask_and_rm(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "llama.md").write_text("# Llama 3.1\n\nLlama 3.1 tiene un contexto de 128K tokens.", encoding="utf-8")
    (docs / "rope.md").write_text(
        "# RoPE\n\nRoPE codifica la posición rotando las consultas y claves.", encoding="utf-8"
    )
    (docs / "cocina.txt").write_text("La paella lleva arroz y azafrán.", encoding="utf-8")
    data = ["--data-dir", str(tmp_path / "data")]
    added = runner.invoke(app, ["index", "add", "notas", str(docs), *data])
    assert added.exit_code == 0, added.output
    assert "3 added" in added.output
    listed = runner.invoke(app, ["index", "list", *data])
    assert "notas" in listed.output and "SmolLM2" in listed.output
    assert "llama.md" in runner.invoke(app, ["index", "show", "notas", *data]).output

    found = runner.invoke(app, ["search", "notas", "contexto de llama", "--top", "2", "--json", *data])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)
    assert len(hits) == 2 and {"text", "source", "score"} <= set(hits[0])
    assert hits[0]["source"].endswith("llama.md")

    answer = runner.invoke(app, ["ask", "notas", "contexto de llama", "--top", "2", "--max-tokens", "16", *data])
    assert answer.exit_code == 0, answer.output
    listed_sources = re.findall(r"^\[(\d+)\] (\S+)", answer.stdout.split("Fuentes:")[1], flags=re.M)
    # The numbers printed are the retrieved chunks, in retrieval order.
    assert [(int(n), Path(p).name) for n, p in listed_sources] == [
        (i, Path(h["source"]).name) for i, h in enumerate(hits, start=1)
    ]

    assert runner.invoke(app, ["index", "rm", "notas", *data]).exit_code == 0
    missing = runner.invoke(app, ["search", "notas", "x", *data])
    assert missing.exit_code == 1 and "no collection 'notas'" in missing.output


def test_explain_shares_are_the_attention_paid_to_the_sources(course):
    from llamita.glass.attention import attention_weights
    from llamita.rag.answer import default_params
    from llamita.rag.explain import explain
    from llamita.rag.retrieval import Hit

    llm = course.embedder.llm
    hits = [
        Hit(1, "Llama 3.1 tiene un contexto de 128K tokens.", "/d/llama.md", "Llama 3.1", None, None, 1.0),
        Hit(2, "La paella lleva arroz y azafrán.", "/d/cocina.txt", "", None, None, 0.5),
    ]
    prompt = build_prompt(llm, "¿Qué contexto tiene Llama 3.1?", hits, answer_tokens=8)
    answer = llm.chat(prompt.messages, default_params(8)).token_ids
    found = explain(llm, prompt, answer)
    ids = prompt.prompt_token_ids
    for (start, end), hit in zip(found.spans, hits):
        assert hit.text in llm.tokenizer.decode(ids[start:end])
    # The same sum read from the glass box's full attention maps.
    weights = attention_weights(llm.loaded.model, ids + answer)  # (L, H, S, S)
    rows = weights[:, :, len(ids) - 1 : len(ids) - 1 + len(answer)]
    on_sources = sum(rows[..., a:b].sum() for a, b in found.spans) / (rows.shape[0] * rows.shape[1] * len(answer))
    assert found.retrieved == pytest.approx(float(on_sources), abs=1e-4)
    assert sum(found.shares) == pytest.approx(found.retrieved, abs=1e-6)
    assert found.per_token.shape == (len(answer), 2) and 0 < found.retrieved < 1
    assert found.other == pytest.approx(1 - found.retrieved)


def test_rerank_by_question_likelihood(course):
    from llamita.rag.rerank import question_likelihood

    llm = course.embedder.llm
    question = "¿Cuántas capas tiene Llama 3.1 8B?"
    answering = "Llama 3.1 8B: Parámetros: 8 mil millones. Capas: 32. Dimensión oculta: 4096."
    others = ["La paella lleva arroz y azafrán.", "RoPE rota las consultas y las claves según su posición."]
    scores = [question_likelihood(llm, p, question, "es") for p in [answering, *others]]
    assert scores[0] > max(scores[1:])
    plain = course.search(question, 5, mode="bm25")
    reranked = course.search(question, 3, mode="bm25", rerank=5)
    assert len(reranked) == 3 and {h.id for h in reranked} <= {h.id for h in plain}
    assert any("Capas: 32" in h.text for h in reranked)
