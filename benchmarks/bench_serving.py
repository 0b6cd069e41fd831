"""Serving throughput and latency: C concurrent clients streaming chat requests for a fixed time.

Each client sends `/v1/chat/completions` requests with `stream: true` one after another, with
prompts of mixed length (short questions and a long pasted text), and measures time to first
token (TTFT) and the gaps between streamed chunks (inter-token latency, ITL). Works against any
OpenAI-compatible server: `llamita serve`, or llama.cpp's `llama-server --parallel C` on the
same GGUF for a side-by-side (build it in a scratch folder; never commit it).

    python benchmarks/bench_serving.py --start-llamita --concurrency 1 4 16 --seconds 30
    python benchmarks/bench_serving.py --url http://127.0.0.1:8081 --concurrency 4   # llama-server
    python benchmarks/bench_serving.py --start-llamita --llama-server PATH/llama-server  # side by side

With both --start-llamita and --llama-server, each concurrency level runs on llamita and then
on a fresh `llama-server --parallel C` over the same GGUF, and the JSON adds their ratios.

`llamita serve` decodes eagerly until its compiled step is built (in the background, minutes
on 2 cores). --compiled-dir DIR keeps the packages in DIR (LLAMITA_COMPILED_DIR) and
--wait-compiled first lets the server build them, then restarts it so the run uses them; the
JSON keeps the server's start-up line, which says the decode path ("compiled step" or eager).

Only loopback URLs are accepted. Prints JSON: one row per concurrency with requests/s,
aggregate generated tokens/s, TTFT and ITL p50/p99 (seconds), errors.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

QUESTIONS = [
    "What is the capital of France?",
    "Explica qué es un token en una frase.",
    "Write a haiku about the sea.",
    "Name three primary colors.",
    "¿Cuántos días tiene un año bisiesto?",
    "Give me a tip for learning Python.",
]
LONG = (
    "Summarize the following text in two sentences.\n\n"
    + "Large language models predict the next token from the ones before it. " * 40
)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _client(url: str, deadline: float, max_tokens: int, seed: int, out: dict) -> None:
    rng = random.Random(seed)
    # A new connection per request: reusing one that the server has just closed (llama-server
    # does between streamed responses) fails as "Server disconnected", an error of the client's.
    with httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        while time.perf_counter() < deadline:
            prompt = LONG if rng.random() < 0.25 else rng.choice(QUESTIONS)
            body = {
                "messages": [{"role": "user", "content": prompt}],
                "stream": True,
                "max_tokens": max_tokens,
                "temperature": 0.7,
                "seed": rng.randrange(1 << 30),
                "stream_options": {"include_usage": True},
            }
            start = last = time.perf_counter()
            first = None
            try:
                with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        out["errors"] += 1
                        _note_error(out, f"HTTP {r.status_code}: {r.read()[:200].decode(errors='replace')}")
                        continue
                    for line in r.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            out["tokens"] += chunk["usage"]["completion_tokens"]
                        choices = chunk.get("choices") or []
                        if choices and choices[0].get("delta", {}).get("content"):
                            now = time.perf_counter()
                            if first is None:
                                first = now
                                out["ttft"].append(now - start)
                            else:
                                out["itl"].append(now - last)
                            last = now
                out["requests"] += 1
            except httpx.HTTPError as e:
                out["errors"] += 1
                _note_error(out, f"{type(e).__name__}: {e}")


def _note_error(out: dict, message: str) -> None:
    """Keep the first few distinct error messages, so a row with errors says what they were."""
    if message not in out["error_samples"] and len(out["error_samples"]) < 3:
        out["error_samples"].append(message)


def run_level(url: str, concurrency: int, seconds: float, max_tokens: int) -> dict:
    results = [
        {"requests": 0, "tokens": 0, "errors": 0, "ttft": [], "itl": [], "error_samples": []}
        for _ in range(concurrency)
    ]
    start = time.perf_counter()
    deadline = start + seconds
    threads = [
        threading.Thread(target=_client, args=(url, deadline, max_tokens, i, results[i])) for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ttft = [x for r in results for x in r["ttft"]]
    itl = [x for r in results for x in r["itl"]]
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "requests": sum(r["requests"] for r in results),
        "requests_per_second": round(sum(r["requests"] for r in results) / elapsed, 3),
        "generated_tokens_per_second": round(sum(r["tokens"] for r in results) / elapsed, 2),
        "ttft_p50": _percentile(ttft, 0.5),
        "ttft_p99": _percentile(ttft, 0.99),
        "itl_p50": _percentile(itl, 0.5),
        "itl_p99": _percentile(itl, 0.99),
        "itl_mean": statistics.fmean(itl) if itl else None,
        "errors": sum(r["errors"] for r in results),
        "error_samples": sorted({m for r in results for m in r["error_samples"]})[:5],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llamita(
    model: str | None, max_running: int, compiled_dir: str | None = None, threads: int | None = None
) -> tuple[str, subprocess.Popen]:
    """`llamita serve` on a free port; its output goes to a log file (`proc.log_path`)."""
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "llamita.cli.main",
        "serve",
        "--port",
        str(port),
        "--max-running",
        str(max_running),
        "--max-queue",
        "256",
    ]
    if model:
        cmd += ["--model", model]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, LLAMITA_COMPILED_DIR=compiled_dir) if compiled_dir else None
    log = tempfile.NamedTemporaryFile("w+b", prefix="llamita-serve-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.log_path = log.name  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url, proc, "llamita serve")
    return url, proc


def serving_line(proc: subprocess.Popen) -> str | None:
    """The server's start-up line ("llamita: serving ... (..., eager|compiled step decode) ...")."""
    text = Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]
    return next((line for line in text.splitlines() if line.startswith("llamita: serving")), None)


def wait_compiled(folder: str, timeout: float) -> str:
    """Wait until no build lock in `folder` is held (the background builder is done): "built"
    when packages are there, "failed" when a build recorded a failure, "timeout" otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        locks = list(Path(folder).glob("decode-*.lock"))
        held = False
        for lock in locks:
            with open(lock, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                except BlockingIOError:
                    held = True
        if locks and not held:
            if list(Path(folder).glob("decode-*.failed")):
                return "failed"
            return "built"
        time.sleep(2)
    return "timeout"


def _llamita_with_packages(args: argparse.Namespace) -> tuple[str, subprocess.Popen, dict]:
    """Start `llamita serve`; with --wait-compiled, let it build its packages and restart it."""
    url, proc = start_llamita(args.model, max(args.concurrency), args.compiled_dir, args.threads)
    info: dict = {"compiled_dir": args.compiled_dir}
    if args.wait_compiled:
        start = time.monotonic()
        info["build"] = wait_compiled(args.compiled_dir, args.wait_compiled)
        info["build_wait_s"] = round(time.monotonic() - start, 1)
        _stop(proc)
        url, proc = start_llamita(args.model, max(args.concurrency), args.compiled_dir, args.threads)
    info["startup_line"] = serving_line(proc)
    return url, proc, info


def _wait_healthy(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{what} did not start within 120 s")


def start_llama_server(
    binary: str, model: str, parallel: int, threads: int, extra: list[str] | None = None
) -> tuple[str, subprocess.Popen]:
    """llama.cpp's server on the same GGUF with `parallel` slots of 2048 tokens each, plus the
    `extra` arguments."""
    port = _free_port()
    cmd = [
        binary,
        "-m",
        model,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--parallel",
        str(parallel),
        "-c",
        str(2048 * parallel),
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        *(extra or []),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url, proc, "llama-server")
    return url, proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def side_by_side(args: argparse.Namespace) -> dict:
    from llamita.library.catalog import default_model_path

    model = args.model or str(default_model_path())
    url, proc, info = _llamita_with_packages(args)
    load_start = os.getloadavg()
    ours, theirs = [], []
    try:
        for c in args.concurrency:
            ours.append(run_level(url, c, args.seconds, args.max_tokens))
            peer_url, peer = start_llama_server(args.llama_server, model, c, args.threads, args.llama_server_arg)
            try:
                theirs.append(run_level(peer_url, c, args.seconds, args.max_tokens))
            finally:
                _stop(peer)
    finally:
        _stop(proc)

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    ratios = [
        {
            "concurrency": a["concurrency"],
            "tokens_per_second": ratio(a["generated_tokens_per_second"], b["generated_tokens_per_second"]),
            "ttft_p50": ratio(a["ttft_p50"], b["ttft_p50"]),
            "itl_p50": ratio(a["itl_p50"], b["itl_p50"]),
            "itl_p99": ratio(a["itl_p99"], b["itl_p99"]),
        }
        for a, b in zip(ours, theirs)
    ]
    return {
        "model": model,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "llama_server_args": args.llama_server_arg,
        "llamita_server": info,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "llamita": ours,
        "llama.cpp": theirs,
        "llamita_over_llama_cpp": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an OpenAI-compatible server on loopback")
    parser.add_argument("--start-llamita", action="store_true", help="start `llamita serve` for the run")
    parser.add_argument("--model", help="model for --start-llamita (default: the embedded one)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--llama-server", help="path of a llama-server binary to run side by side")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="threads of both servers (default 2; llamita's own default follows the load average)",
    )
    parser.add_argument(
        "--llama-server-arg",
        action="append",
        default=[],
        help="one more argument for llama-server (repeatable; e.g. --llama-server-arg=--poll --llama-server-arg=0)",
    )
    parser.add_argument("--compiled-dir", help="LLAMITA_COMPILED_DIR for the llamita server (default: its own)")
    parser.add_argument(
        "--wait-compiled",
        type=float,
        default=0,
        help="seconds to wait for the llamita server's compiled step to build before measuring "
        "(needs --compiled-dir; default 0: measure at once)",
    )
    args = parser.parse_args(argv)
    if args.wait_compiled and not args.compiled_dir:
        parser.error("--wait-compiled needs --compiled-dir (a folder of its own to watch)")
    if args.llama_server:
        if not args.start_llamita or args.url:
            parser.error("--llama-server goes with --start-llamita (the side-by-side run)")
        print(json.dumps(side_by_side(args), indent=2))
        return 0
    if bool(args.url) == args.start_llamita:
        parser.error("give --url or --start-llamita")
    proc, info = None, None
    if args.start_llamita:
        args.url, proc, info = _llamita_with_packages(args)
    host = urlparse(args.url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        parser.error("only loopback servers are benchmarked here")
    try:
        rows = [run_level(args.url, c, args.seconds, args.max_tokens) for c in args.concurrency]
    finally:
        if proc is not None:
            _stop(proc)
    report = {"url": args.url, "max_tokens": args.max_tokens, "llamita_server": info, "load_average": os.getloadavg()}
    print(json.dumps({**report, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
