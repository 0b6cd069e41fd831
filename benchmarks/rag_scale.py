"""RAG at scale: indexing throughput and search latency on a synthetic collection. Prints JSON.

The collection is synthetic: chunk texts of ~120 words drawn (Zipf-distributed) from the
words of the course texts, and random unit vectors of the default model's width (576) for
the dense part, so that the figures measure llamita's storage and search, not the model.
The model's own cost is measured beside them: embedding real chunks (the indexing
bottleneck) and one query.

    PYTHONPATH=src python benchmarks/rag_scale.py [--chunks 100000] [--index-chunks 10000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "tests" / "data" / "rag" / "course"
DIM = 576
PER_FILE = 100


class RandomEmbedder:
    """Random unit vectors: the dense index without the model's cost."""

    name = model_path = "random-vectors"
    dim = DIM

    def __init__(self, seed: int = 0) -> None:
        from llamita.rag.embedder import EmbeddingSpec

        self.spec = EmbeddingSpec()
        self.rng = np.random.default_rng(seed)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def embed_documents(self, texts):
        v = self.rng.standard_normal((len(texts), DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_query(self, text):
        return self.embed_documents([text])[0]


def vocabulary() -> list[str]:
    words: dict[str, int] = {}
    for path in COURSE.iterdir():
        for w in re.findall(r"\w{3,}", path.read_text(encoding="utf-8").lower()):
            words[w] = words.get(w, 0) + 1
    return sorted(words, key=lambda w: -words[w])


def percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000, help="size of the searched collection")
    parser.add_argument("--index-chunks", type=int, default=10_000, help="chunks indexed through files")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--model-chunks", type=int, default=16, help="real chunks embedded by the default model")
    args = parser.parse_args()
    import torch

    from llamita.rag import Collection
    from llamita.rag.chunker import Chunk

    rng = np.random.default_rng(1)
    vocab = np.array(vocabulary())
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()

    def text(n_words: int = 120) -> str:
        return " ".join(rng.choice(vocab, n_words, p=zipf))

    result: dict = {
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "dim": DIM,
        "vocabulary": len(vocab),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        embedder = RandomEmbedder()
        # 1. Indexing through files: read, chunk (by the words counter), vectors, store.
        docs = tmp_path / "docs"
        docs.mkdir()
        n_files = max(1, args.index_chunks // 10)
        for i in range(n_files):  # ~10 chunks of 100 words per file (budget 128, overlap 16)
            paras = "\n\n".join(text(50) for _ in range(20))
            (docs / f"doc{i:05d}.md").write_text(f"# Documento {i}\n\n{paras}", encoding="utf-8")
        collection = Collection("indexed", data_dir=tmp_path, create=True, embedder=embedder)
        start = time.perf_counter()
        report = collection.add([docs], chunk_tokens=128, chunk_overlap=16)
        seconds = time.perf_counter() - start
        result["index_files"] = {
            "files": n_files,
            "chunks": report.chunks,
            "seconds": round(seconds, 2),
            "chunks_per_s": round(report.chunks / seconds, 1),
            "note": "read + chunk + store, random vectors (no model)",
        }

        # 2. A large collection for search, written straight through the store.
        big = Collection("big", data_dir=tmp_path, create=True, embedder=embedder)
        start = time.perf_counter()
        for f in range(args.chunks // PER_FILE):
            chunks = [Chunk(text(), f"Documento {f}", None, None, 160, p) for p in range(PER_FILE)]
            big.store.put_file(
                f"/synthetic/doc{f:06d}.md", f"{f:064x}", 0, chunks, embedder.embed_documents([c.text for c in chunks])
            )
        result["store_chunks"] = {
            "chunks": big.store.counts()[1],
            "chunks_per_s": round(args.chunks / (time.perf_counter() - start), 1),
            "db_mib": round(big.store.path.stat().st_size / 2**20, 1),
        }
        start = time.perf_counter()
        big.search("warm up", 10, mode="dense")  # reads every vector once
        result["load_vectors_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()  # what `add` does after indexing (a first hybrid search, if not)
        weight = big.measure_dense_weight()
        result["measure_dense_weight"] = {
            "seconds": round(time.perf_counter() - start, 2),
            "weight": weight,
            "note": "random vectors: weight 0; the dense ranking is computed all the same",
        }
        queries = [" ".join(rng.choice(vocab[20:2000], rng.integers(2, 6))) for _ in range(args.queries)]
        for mode in ("hybrid", "bm25", "dense"):
            times = []
            for q in queries:
                start = time.perf_counter()
                big.search(q, 10, mode=mode)
                times.append(time.perf_counter() - start)
            result[f"search_{mode}_top10_ms"] = {"p50": percentile_ms(times, 50), "p99": percentile_ms(times, 99)}

    # 3. The model's part: embedding real chunks and one query with the default model.
    from llamita.api.llm import LLM
    from llamita.rag.chunker import chunk_blocks
    from llamita.rag.embedder import Embedder
    from llamita.rag.indexer import embedding_input
    from llamita.rag.readers import markdown_blocks

    model = Embedder(LLM())
    course = (COURSE / "modulo1_fundamentos_llama31.txt").read_text(encoding="utf-8")
    chunks = chunk_blocks(markdown_blocks(course), model.count_tokens, budget=256, overlap=32)[: args.model_chunks]
    start = time.perf_counter()
    model.embed_documents([embedding_input(c) for c in chunks])
    seconds = time.perf_counter() - start
    tokens = sum(c.n_tokens for c in chunks)
    start = time.perf_counter()
    for _ in range(10):
        model.embed_query("¿Cuántos parámetros tiene Llama 3.1 405B?")
    result["default_model"] = {
        "name": model.name,
        "chunks": len(chunks),
        "tokens": tokens,
        "chunks_per_s": round(len(chunks) / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "query_embedding_ms": round((time.perf_counter() - start) * 100, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
