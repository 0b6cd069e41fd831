"""What loading a model on demand costs in `llamita serve`: the first request to a library
model that is not loaded (load + answer) against the same request once it is loaded, and the
pool's memory estimate for it against the resident memory it added (VmRSS) and gave back when
unloaded (keep_alive 0).

The library is a temporary LLAMITA_HOME holding a copy of the model file under another name
(a different file, so the pool loads it beside the default model, which is the same model).

    python benchmarks/model_pool.py                  # the embedded default model
    python benchmarks/model_pool.py --model path/to/model.gguf --tokens 16

Prints JSON. Memory in bytes, times in seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def rss() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="GGUF file (default: the embedded model)")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--kv-cache-tokens", type=int, default=4096)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="llamita-pool-bench-")
    os.environ.update(LLAMITA_HOME=f"{home}/llamita", HF_HOME=f"{home}/hf", OLLAMA_MODELS=f"{home}/ollama")
    from fastapi.testclient import TestClient

    from llamita.engine.llm_engine import LLMEngine
    from llamita.engine.loader import load_model
    from llamita.jobs.memory import served_bytes
    from llamita.library.catalog import default_model_path
    from llamita.library.manage import copy_model
    from llamita.serving.app import create_app
    from llamita.serving.engine_loop import EngineLoop
    from llamita.serving.model_pool import PoolConfig

    source = Path(args.model) if args.model else default_model_path()
    other = Path(home) / ("other-" + source.name)
    shutil.copyfile(source, other)
    copy_model(str(other), "other")

    def engine_loop(path: Path) -> EngineLoop:
        return EngineLoop(LLMEngine(load_model(path), kv_cache_tokens=args.kv_cache_tokens))

    default = engine_loop(source)
    default.start()
    per_element = default.engine.loaded.dtype.itemsize

    def estimate(path: Path) -> int:
        return served_bytes(path, kv_cache_tokens=args.kv_cache_tokens, kv_bytes_per_element=per_element)

    app = create_app(
        default,
        "default",
        data_dir=home,
        pool_config=PoolConfig(library=True),
        load_engine=engine_loop,
        estimate=estimate,
    )
    body = {
        "model": "other",
        "prompt": "The capital of France is",
        "raw": True,
        "stream": False,
        "options": {"temperature": 0, "num_predict": args.tokens},
    }
    with TestClient(app) as client:
        client.post("/api/generate", json={**body, "model": "default"})  # warm the kernels
        gc.collect()
        before = rss()
        start = time.perf_counter()
        first = client.post("/api/generate", json=body).json()
        first_s = time.perf_counter() - start
        loaded = rss()
        start = time.perf_counter()
        client.post("/api/generate", json=body)
        second_s = time.perf_counter() - start
        client.post("/api/generate", json={"model": "other", "keep_alive": 0})
        while app.state.pool.unloads == 0:  # counted once the memory is given back
            time.sleep(0.05)
        gc.collect()
        after = rss()
    app.state.pool.close()
    default.stop()
    print(
        json.dumps(
            {
                "model": str(source),
                "file_bytes": source.stat().st_size,
                "dtype": str(default.engine.loaded.dtype),
                "kv_cache_tokens": args.kv_cache_tokens,
                "tokens": first["eval_count"],
                "estimate_bytes": estimate(other),
                "rss_added_by_load": loaded - before,
                "rss_returned_by_unload": loaded - after,
                "first_request_s (load + answer)": round(first_s, 3),
                "loaded_request_s": round(second_s, 3),
            },
            indent=2,
        )
    )
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
