"""Collections over HTTP: uploading the five course texts to a live server on the default
model (indexing with its embeddings, through the engine thread), search latency through
/v1/collections/NAME/search, and what answering from a collection adds to a chat request
(retrieval + the longer prompt), against the same question without it. Prints JSON.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/rag_http.py [--queries 40]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "tests" / "data" / "rag" / "course"
QUESTIONS = ROOT / "tests" / "data" / "rag" / "questions_es.json"
sys.path.insert(0, str(ROOT / "tests" / "serving"))


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=40, help="search queries per mode (default 40)")
    args = parser.parse_args()

    from llamita.api.llm import LLM

    from serving_helpers import start_server

    questions = [q["question"] for q in json.loads(QUESTIONS.read_text(encoding="utf-8"))][: args.queries]
    llm = LLM()
    with tempfile.TemporaryDirectory() as data_dir:
        server, stop = start_server(llm.loaded, data_dir=data_dir)
        http = httpx.Client(base_url=server.url, timeout=600)
        try:
            http.post("/v1/collections", json={"name": "curso"}).raise_for_status()
            files = [("files", (p.name, p.read_bytes(), "text/plain")) for p in sorted(COURSE.iterdir())]
            start = time.perf_counter()
            report = http.post("/v1/collections/curso/files", files=files).json()
            upload_s = time.perf_counter() - start
            search = {}
            for mode in ("bm25", "hybrid"):
                times = []
                for q in questions:
                    start = time.perf_counter()
                    http.post(
                        "/v1/collections/curso/search", json={"query": q, "top": 5, "mode": mode}
                    ).raise_for_status()
                    times.append(time.perf_counter() - start)
                search[mode] = percentiles(times)
            chat = {}
            for label, extra in (
                ("without collections", {}),
                ("with collections (bm25, top 5)", {"collections": ["curso"], "rag": {"mode": "bm25"}}),
            ):
                times, prompt_tokens = [], []
                for q in questions[:10]:
                    start = time.perf_counter()
                    r = http.post(
                        "/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": q}], "max_tokens": 1, "temperature": 0, **extra},
                    )
                    times.append(time.perf_counter() - start)
                    prompt_tokens.append(r.json()["usage"]["prompt_tokens"])
                chat[label] = {**percentiles(times), "mean_prompt_tokens": round(float(np.mean(prompt_tokens)))}
        finally:
            stop()
    print(
        json.dumps(
            {
                "cpu": cpu(),
                "model": llm.loaded.path.name,
                "upload": {
                    "files": len(files),
                    "chunks": report["chunks"],
                    "seconds": round(upload_s, 1),
                    "chunks_per_s": round(report["chunks"] / upload_s, 2),
                    "skipped": report["skipped"],
                },
                "search_top5_over_http": search,
                "chat_first_token (max_tokens 1)": chat,
            },
            indent=2,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
