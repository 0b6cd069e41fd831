"""Where `llamita serve` does its model work: the load and the engine's construction run on a
thread that ends before serving starts (engine/threads.py on_fresh_thread: torch's OpenMP keeps
a team of workers per thread that ran a parallel op, and a second team alive beside the engine
thread's made every decode step 3x slower), never on the main thread that serves HTTP."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llamita.config import ServerConfig
from llamita.engine import threads
from llamita.serving import server


class Stop(Exception):
    pass


def test_on_fresh_thread_returns_and_raises_on_the_caller() -> None:
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        return int(torch.arange(10).sum())

    assert threads.on_fresh_thread(work) == 45
    assert seen[0] is not threading.current_thread()
    assert not seen[0].is_alive()  # ended: its OpenMP team is gone with it

    def fails() -> None:
        raise ValueError("bad file")

    with pytest.raises(ValueError, match="bad file"):
        threads.on_fresh_thread(fails)


def test_serve_loads_the_model_off_the_main_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    where: list[threading.Thread] = []

    def fake_load(*args: object, **kwargs: object) -> None:
        where.append(threading.current_thread())
        raise Stop  # nothing to serve: the load's thread is what this test looks at

    monkeypatch.setattr(server, "load_model", fake_load)
    assert threading.current_thread() is threading.main_thread()
    with pytest.raises(Stop):
        server.serve(ServerConfig(threads=1))
    assert where and where[0] is not threading.main_thread()
    assert not where[0].is_alive()


def test_a_model_loaded_on_demand_loads_on_a_thread_that_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool calls its loader from a request's worker thread, which lives on; the load itself
    must run on a thread of its own."""
    where: list[threading.Thread] = []

    def fake_load(*args: object, **kwargs: object) -> None:
        where.append(threading.current_thread())
        raise Stop

    captured: dict[str, object] = {}
    monkeypatch.setattr(server, "load_model", fake_load)
    monkeypatch.setattr(server, "served_bytes", lambda *a, **k: 1)

    def fake_app(*args: object, **kwargs: object) -> None:  # keeps _serve's load_engine, stops there
        captured.update(kwargs)
        raise Stop

    monkeypatch.setattr(server, "create_app", fake_app)

    loaded = SimpleNamespace(
        model=SimpleNamespace(lora=SimpleNamespace(names=[])), path=Path("x.gguf"), dtype=torch.float32
    )
    engine = SimpleNamespace(decode_path="eager", context_length=8, max_running=1)
    with pytest.raises(Stop):
        server._serve(ServerConfig(threads=1), loaded, engine, "eager")  # type: ignore[arg-type]
    load_engine = captured["load_engine"]
    assert callable(load_engine)
    with pytest.raises(Stop):
        load_engine("other")
    assert where and where[0] is not threading.current_thread()
    assert not where[0].is_alive()


def test_to_fresh_thread_runs_off_the_executor_threads() -> None:
    """Request handlers' torch work (searching a collection, an embedding model) runs on a
    thread that ends, not on asyncio's executor threads, which live on."""
    seen: list[threading.Thread] = []

    def work(n: int) -> int:
        seen.append(threading.current_thread())
        return int(torch.arange(n).sum())

    assert asyncio.run(threads.to_fresh_thread(work, 10)) == 45
    assert seen[0].name == "llamita-work" and not seen[0].is_alive()
