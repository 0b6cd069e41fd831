"""Starting a real llamita server on a loopback port in a background thread, for the tests."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MODEL_NAME = "smollm2"


@dataclass
class RunningServer:
    url: str  # http://127.0.0.1:PORT
    loop: object  # the EngineLoop
    app: object


def start_server(loaded, *, api_key: str | None = None, max_queue: int = 64,
                 kv_cache_tokens: int = 4096, max_running: int = 16, engine: object | None = None,
                 data_dir: str | None = None, request_timeout: float | None = None) -> tuple[RunningServer, Callable[[], None]]:
    import uvicorn

    from llamita.engine.llm_engine import LLMEngine
    from llamita.serving.app import create_app
    from llamita.serving.engine_loop import EngineLoop

    """A server over `engine` (default: a new LLMEngine over `loaded`); returns it and its stop.
    data_dir: the web chat's store; default a fresh temporary folder (never the user's own)."""
    if engine is None:
        engine = LLMEngine(loaded, kv_cache_tokens=kv_cache_tokens, max_running=max_running)
    loop = EngineLoop(engine, max_queue=max_queue, request_timeout=request_timeout)
    loop.start()
    scratch = None if data_dir is not None else tempfile.TemporaryDirectory(prefix="llamita-test-")
    app = create_app(loop, MODEL_NAME, api_key=api_key, data_dir=data_dir or scratch.name)
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
