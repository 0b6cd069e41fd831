"""Retrieval quality on the Spanish question sets (written from the five course texts): recall@k
of hybrid, BM25-only and dense-only search with the default model's embeddings. Prints JSON. A
hit: one of the top k chunks contains one of the passages that answer the question
(whitespace-insensitive).

Splits, fixed before any method was compared: `dev` (questions_es.json ids 1-30, what methods
and constants were chosen on), `test` (ids 31-59), `all` (1-59), and `heldout`
(questions_es_heldout.json, written afterwards and not looked at while choosing).

    PYTHONPATH=src python benchmarks/rag_recall.py [--k 5] [--data-dir DIR] [--misses] [--rerank 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "rag"
DEV_LAST = 30  # questions_es.json ids 1..30 are the dev split, 31..59 the test split


def normalize(text: str) -> str:
    return " ".join(text.split())


def recall(collection, questions: list[dict], k: int, mode: str, rerank: int = 0) -> tuple[float, list[int], float]:
    """(recall@k, ids of the missed questions, mean seconds per search)."""
    missed = []
    start = time.perf_counter()
    for q in questions:
        texts = [normalize(h.text) for h in collection.search(q["question"], k, mode=mode, rerank=rerank)]
        if not any(normalize(p) in t for p in q["passages"] for t in texts):
            missed.append(q["id"])
    seconds = (time.perf_counter() - start) / len(questions)
    return 1 - len(missed) / len(questions), missed, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--data-dir", help="reuse (or build) the index here instead of a temporary folder")
    parser.add_argument("--misses", action="store_true", help="list the missed questions on stderr")
    parser.add_argument(
        "--rerank",
        type=int,
        default=0,
        help="also measure re-ranking of the first N "
        "(question likelihood by the default model; ~0.4 s per chunk on one core)",
    )
    parser.add_argument("--rerank-modes", default="bm25", help="comma-separated modes to re-rank")
    args = parser.parse_args()
    from llamita.rag import Collection
    from llamita.rag.store import collection_path

    questions = json.loads((DATA / "questions_es.json").read_text(encoding="utf-8"))
    heldout = json.loads((DATA / "questions_es_heldout.json").read_text(encoding="utf-8"))
    splits = {
        "dev": [q for q in questions if q["id"] <= DEV_LAST],
        "test": [q for q in questions if q["id"] > DEV_LAST],
        "all": questions,
        "heldout": heldout,
    }
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or tmp
        existed = collection_path("course", data_dir).exists()
        collection = Collection("course", data_dir=data_dir, create=True)
        start = time.perf_counter()
        report = collection.add([DATA / "course"])
        index_seconds = time.perf_counter() - start
        meta = collection.settings
        result = {
            "questions": {name: len(qs) for name, qs in splits.items()},
            "k": args.k,
            "collection_reused": existed,
            "chunks": collection.store.counts()[1],
            "chunks_indexed": report.chunks,
            "index_seconds": round(index_seconds, 2),
            "embedding_model": collection.embedder.name,
            "dense_weight": float(meta["dense_weight"]),
            "dense_weight_measure": meta["dense_weight_measure"],
            "cpu": platform.processor() or platform.machine(),
        }
        runs = [(m, 0) for m in ("hybrid", "bm25", "dense")]
        runs += [(m, args.rerank) for m in args.rerank_modes.split(",")] if args.rerank else []
        for mode, rerank in runs:
            name = f"{mode}+rerank{rerank}" if rerank else mode
            result[name] = {}
            for split, qs in splits.items():
                value, missed, seconds = recall(collection, qs, args.k, mode, rerank)
                result[name][split] = {
                    "recall": round(value, 4),
                    "missed": missed,
                    "ms_per_search": round(seconds * 1000, 1),
                }
                if args.misses and split != "all":
                    for q in qs:
                        if q["id"] in missed:
                            print(f"{name} {split} missed {q['id']}: {q['question']}", file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
