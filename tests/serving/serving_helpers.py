"""Helpers for the serving tests: a real llamita server on a loopback port (in a thread or a
subprocess), a scripted engine, web-chat writers."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx

from llamita.engine.llm_engine import EngineStats, RequestOutput

MODEL_NAME = "smollm2"


@dataclass
class RunningServer:
    url: str  # http://127.0.0.1:PORT
    loop: object  # the EngineLoop
    app: object


class ScriptedEngine:
    """The LLMEngine interface; every request 'generates' `script`, one token a step (through
    the real tokenizer), so that a test does not depend on what the default model decides."""

    def __init__(self, loaded, script: str) -> None:
        self.loaded, self.tokenizer, self.config = loaded, loaded.tokenizer, loaded.config
        self.model = loaded.model
        self.context_length = 4096
        self.script = self.tokenizer.encode(script)
        self.requests: dict[str, tuple[int, int]] = {}  # id -> (prompt tokens, tokens emitted)
        self.stats = EngineStats()
        self.blocks = SimpleNamespace(usage=0.0, stats=SimpleNamespace(hit_rate=0.0))
        self.max_running = 4
        self.num_waiting = 0

    @property
    def num_running(self) -> int:
        return len(self.requests)

    def add_request(self, request_id, prompt_ids, params, adapter=None) -> None:
        self.requests[request_id] = (len(prompt_ids), 0)

    def abort(self, request_id) -> bool:
        return self.requests.pop(request_id, None) is not None

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        outputs = []
        for rid, (n_prompt, done) in list(self.requests.items()):
            token = self.script[done]
            finished = done + 1 == len(self.script)
            outputs.append(
                RequestOutput(
                    rid, [token], self.tokenizer.decode([token]), "stop" if finished else None, n_prompt, done + 1, 0
                )
            )
            if finished:
                del self.requests[rid]
            else:
                self.requests[rid] = (n_prompt, done + 1)
        return outputs


class RecordingEngine(ScriptedEngine):
    """The scripted engine, keeping the prompt of every request it is given."""

    def __init__(self, loaded, script: str) -> None:
        super().__init__(loaded, script)
        self.prompts: list[list[int]] = []

    def add_request(self, request_id, prompt_ids, params, adapter=None) -> None:
        self.prompts.append(list(prompt_ids))
        super().add_request(request_id, prompt_ids, params, adapter)


def start_server(
    loaded,
    *,
    api_key: str | None = None,
    max_queue: int = 64,
    kv_cache_tokens: int = 4096,
    max_running: int = 16,
    engine: object | None = None,
    data_dir: str | None = None,
    request_timeout: float | None = None,
    **app_options: object,
) -> tuple[RunningServer, Callable[[], None]]:
    import uvicorn

    from llamita.engine.llm_engine import LLMEngine
    from llamita.serving.app import create_app
    from llamita.serving.engine_loop import EngineLoop

    """A server over `engine` (default: a new LLMEngine over `loaded`); returns it and its stop.
    data_dir: the web chat's store; default a fresh temporary folder (never the user's own).
    app_options: more of create_app's keywords (the library: pool_config, load_engine...)."""
    if engine is None:
        engine = LLMEngine(loaded, kv_cache_tokens=kv_cache_tokens, max_running=max_running)
    loop = EngineLoop(engine, max_queue=max_queue, request_timeout=request_timeout)
    loop.start()
    scratch = None if data_dir is not None else tempfile.TemporaryDirectory(prefix="llamita-test-")
    app = create_app(loop, MODEL_NAME, api_key=api_key, data_dir=data_dir or scratch.name, **app_options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        app.state.pool.close()
        loop.stop()
        sock.close()
        if scratch is not None:
            scratch.cleanup()

    return RunningServer(f"http://127.0.0.1:{port}", loop, app), stop


def wait_idle(loop, timeout: float = 10.0) -> bool:
    """True once the engine holds no request (within timeout seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not loop.engine.has_unfinished() and loop.num_waiting == 0:
            return True
        time.sleep(0.01)
    return False


def start_serve_process(
    data_dir: Path, *args: str, stderr=subprocess.DEVNULL, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """`llamita serve` (the default model) in a subprocess on a free loopback port, with the web
    chat's store in data_dir and `env` added to the environment; returns it once /health
    answers, and its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamita.cli.main", "serve", "--port", str(port), "--data-dir", str(data_dir), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)


class ChatWriters:
    """n threads writing conversations, messages and feedback through /ui until stopped or the
    server goes away; `acked` holds the ids of every write the server acknowledged."""

    def __init__(self, url: str, n: int = 4) -> None:
        self.url = url
        self.acked: dict[str, list] = {"conversations": [], "messages": [], "feedback": []}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(i,)) for i in range(n)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _ack(self, kind: str, value: object) -> None:
        with self._lock:
            self.acked[kind].append(value)

    def _write(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as http:
            while not self._stop.is_set():
                try:
                    c = http.post("/ui/conversations", json={"title": f"c{n}"})
                    if c.status_code != 201:
                        continue
                    cid = c.json()["id"]
                    self._ack("conversations", cid)
                    for i in range(3):
                        m = http.post(
                            f"/ui/conversations/{cid}/messages",
                            json={"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"},
                        )
                        if m.status_code != 201:
                            break
                        mid = m.json()["id"]
                        self._ack("messages", mid)
                        if i % 2:
                            f = http.put(f"/ui/messages/{mid}/feedback", json={"rating": 1, "comment": "ok"})
                            if f.status_code == 200:
                                self._ack("feedback", mid)
                except httpx.TransportError:
                    return  # the server is gone

    def assert_stored(self, db_path: Path) -> None:
        """SQLite finds the database consistent and every acknowledged write is in it."""
        db = sqlite3.connect(db_path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conversations = {r[0] for r in db.execute("SELECT id FROM conversations")}
            messages = {r[0] for r in db.execute("SELECT id FROM messages")}
            feedback = {r[0] for r in db.execute("SELECT message_id FROM feedback")}
        finally:
            db.close()
        assert set(self.acked["conversations"]) <= conversations
        assert set(self.acked["messages"]) <= messages
        assert set(self.acked["feedback"]) <= feedback
