"""Many models in one server: a temporary library of tiny GGUFs (LLAMITA_HOME, HF_HOME,
OLLAMA_MODELS in tmp_path), models loaded on demand by name, keep_alive, LRU eviction under
--max-memory, 507 for a model that cannot fit, a stream an eviction waits for, and the
library routes through the official `ollama` client (pull against a hub on loopback)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import ollama
import pytest
from library.fake_hub import FakeHub

from llamita import LLM
from llamita.engine.llm_engine import LLMEngine
from llamita.engine.loader import load_model
from llamita.jobs.memory import served_bytes
from llamita.library.manage import copy_model
from llamita.sampling_params import SamplingParams
from llamita.serving.engine_loop import EngineLoop
from llamita.serving.keep_alive import parse_bytes, parse_keep_alive
from llamita.serving.model_pool import PoolConfig
from llamita.serving.server import attach_created_adapters

from lora_models import make_peft_adapter
from serving_helpers import MODEL_NAME, start_server
from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

KV_TOKENS = 128
PROMPT = "the cat sat"
N = 12
OPTIONS = {"temperature": 0, "num_predict": N}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Three tiny llama GGUFs with different weights: the default model and two library ones."""
    folder = tmp_path_factory.mktemp("pool-models")
    cfg = tiny_hf_config()
    return {
        k: write_gguf(folder / f"{k}.gguf", cfg, random_hf_weights(cfg, seed=10 + i))
        for i, k in enumerate(("base", "a", "b"))
    }


@pytest.fixture(scope="module")
def reference(files) -> dict[str, str]:
    """Each file's greedy answer to PROMPT (raw), from the offline LLM API."""
    return {
        k: LLM(p, dtype="float32", device="cpu").generate(PROMPT, SamplingParams(temperature=0, max_tokens=N)).text
        for k, p in files.items()
    }


@pytest.fixture
def library(tmp_path, monkeypatch, files) -> Path:
    """An empty library, HF cache and Ollama store in tmp_path, with tiny-a and tiny-b named."""
    for var in ("HF_TOKEN", "HF_HUB_CACHE", "HF_ENDPOINT", "OLLAMA_KEEP_ALIVE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LLAMITA_HOME", str(tmp_path / "llamita"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    copy_model(str(files["a"]), "tiny-a")
    copy_model(str(files["b"]), "tiny-b")
    return tmp_path


def size_of(path: Path) -> int:
    return served_bytes(path, kv_cache_tokens=KV_TOKENS, kv_bytes_per_element=4)


class Server:
    def __init__(self, files: dict[str, Path], gate: threading.Event | None = None, **pool: object) -> None:
        def load_engine(name: str) -> EngineLoop:
            loaded = load_model(name, dtype="float32", device="cpu")
            attach_created_adapters(loaded)  # as serving/server.py loads a library model
            engine = LLMEngine(loaded, kv_cache_tokens=KV_TOKENS, max_running=2)
            if gate is not None and engine.loaded.path == files["a"].resolve():  # tiny-a's tokens wait for the test
                engine.on_logits = lambda request_id, logits: gate.wait(30)
            return EngineLoop(engine)

        loaded = load_model(files["base"], dtype="float32", device="cpu")
        self.running, self._stop = start_server(
            loaded,
            kv_cache_tokens=KV_TOKENS,
            max_running=2,
            pool_config=PoolConfig(library=True, **pool),
            load_engine=load_engine,
            estimate=size_of,
        )
        self.url = self.running.url
        self.pool = self.running.app.state.pool
        self.client = ollama.Client(host=self.url, timeout=60)

    def generate(self, model: str | None, **extra: object) -> httpx.Response:
        body = {"prompt": PROMPT, "raw": True, "stream": False, "options": OPTIONS, **extra}
        if model is not None:
            body["model"] = model
        return httpx.post(self.url + "/api/generate", json=body, timeout=60)

    def answer(self, model: str | None, **extra: object) -> str:
        r = self.generate(model, **extra)
        assert r.status_code == 200, r.text
        return r.json()["response"]

    def loaded(self) -> set[str]:
        return {m.model for m in self.client.ps().models}

    def wait_unloaded(self, name: str, timeout: float = 20.0) -> bool:
        """Polls /api/ps until `name` is gone (the sweeper unloads in its own thread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if name not in self.loaded():
                return True
            time.sleep(0.02)
        return False

    def metric(self, name: str) -> float:
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def stop(self) -> None:
        self._stop()


@pytest.fixture
def server(library, files) -> Iterator[Server]:
    s = Server(files)
    yield s
    s.stop()


def test_keep_alive_and_sizes_parse_as_ollama_and_iec_write_them():
    assert parse_keep_alive("5m") == 300 and parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive("300ms") == pytest.approx(0.3) and parse_keep_alive(90) == 90
    assert parse_keep_alive(0) == 0 and parse_keep_alive(-1) is None and parse_keep_alive("-1m") is None
    assert parse_keep_alive("10") == 10
    for bad in ("5 minutes", "m", True, [1]):
        with pytest.raises(ValueError):
            parse_keep_alive(bad)
    assert parse_bytes("16GiB") == 16 * 2**30 and parse_bytes("8GB") == 8 * 10**9 and parse_bytes("512") == 512
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_two_models_load_on_demand_and_answer_in_one_server(server, reference):
    assert server.loaded() == {MODEL_NAME}
    assert reference["a"] != reference["b"]  # else the test could not tell them apart
    first, again = server.generate("tiny-a").json(), server.generate("tiny-a").json()
    assert first["response"] == again["response"] == reference["a"]
    # Ollama's load_duration: the wait for the load, on the request that waited only.
    assert first["load_duration"] > 0 and again["load_duration"] == 0
    assert first["total_duration"] > first["load_duration"]
    assert server.loaded() == {MODEL_NAME, "tiny-a"}
    assert server.answer("tiny-b") == reference["b"]
    assert server.answer("tiny-a:latest") == reference["a"]  # Ollama's default tag
    assert server.answer(None) == reference["base"]  # no name: the default model
    assert server.answer("gpt-4o") == reference["base"]  # lenient: an unknown name too
    assert server.loaded() == {MODEL_NAME, "tiny-a", "tiny-b"}
    assert server.metric("llamita_loaded_models") == 3 and server.metric("llamita_model_loads_total") == 2
    # The OpenAI API reaches the library the same way.
    r = httpx.post(
        server.url + "/v1/completions",
        json={"model": "tiny-b", "prompt": PROMPT, "max_tokens": N, "temperature": 0},
        timeout=60,
    )
    assert r.json()["choices"][0]["text"] == reference["b"] and r.json()["model"] == "tiny-b"
    listed = {m["id"] for m in httpx.get(server.url + "/v1/models", timeout=10).json()["data"]}
    assert {MODEL_NAME, "tiny-a", "tiny-b"} <= listed


def test_keep_alive_zero_unloads_and_a_short_keep_alive_expires(server):
    r = server.generate("tiny-a", prompt="")  # an empty prompt only loads
    assert r.json()["done_reason"] == "load" and "tiny-a" in server.loaded()
    r = server.generate("tiny-a", prompt="", keep_alive=0)
    assert r.json()["done_reason"] == "unload"
    assert server.wait_unloaded("tiny-a")
    before = datetime.now(timezone.utc)
    server.answer("tiny-b", keep_alive="2s")
    (entry,) = [m for m in server.client.ps().models if m.model == "tiny-b"]
    assert before < entry.expires_at <= datetime.now(timezone.utc) + timedelta(seconds=2.5)
    assert entry.size == size_of(server.pool.get("tiny-b").path) and entry.size_vram == 0
    assert server.wait_unloaded("tiny-b")
    assert server.loaded() == {MODEL_NAME}  # the default model stays
    assert _until(lambda: server.metric("llamita_model_unloads_total") == 2)  # counted once memory is back


def test_least_recently_used_is_unloaded_when_the_next_would_not_fit(library, files, reference):
    limit = size_of(files["base"]) + max(size_of(files["a"]), size_of(files["b"])) + 1000
    server = Server(files, max_memory=limit)
    try:
        assert server.answer("tiny-a") == reference["a"]
        assert server.answer("tiny-b") == reference["b"]
        assert server.loaded() == {MODEL_NAME, "tiny-b"}
        assert server.answer("tiny-a") == reference["a"]
        assert server.loaded() == {MODEL_NAME, "tiny-a"}
        assert _until(lambda: server.metric("llamita_model_unloads_total") == 2)  # counted once memory is back
    finally:
        server.stop()


def test_max_loaded_models_counts_the_default_and_unloads_the_least_recently_used(library, files, reference):
    server = Server(files, max_loaded=2)  # OLLAMA_MAX_LOADED_MODELS=2; memory is no limit here
    try:
        assert server.answer("tiny-a") == reference["a"]
        assert server.loaded() == {MODEL_NAME, "tiny-a"}
        assert server.answer("tiny-b") == reference["b"]
        assert server.loaded() == {MODEL_NAME, "tiny-b"}
        assert server.answer(None) == reference["base"]  # the default is never the one to go
        assert server.answer("tiny-a") == reference["a"]
        assert server.loaded() == {MODEL_NAME, "tiny-a"}
    finally:
        server.stop()
    server = Server(files, max_loaded=1)
    try:
        r = server.generate("tiny-a")
        assert r.status_code == 503 and "--max-loaded-models" in r.json()["error"]["message"]
        assert server.answer(None) == reference["base"] and server.loaded() == {MODEL_NAME}
    finally:
        server.stop()


def test_a_model_that_cannot_fit_is_a_507_naming_the_sizes(library, files):
    server = Server(files, max_memory=size_of(files["base"]) + size_of(files["a"]) - 1)
    try:
        r = server.generate("tiny-a")
        assert r.status_code == 507
        message = r.json()["error"]["message"]
        assert "tiny-a" in message and "--max-memory" in message and "MiB" in message
        assert server.loaded() == {MODEL_NAME}
    finally:
        server.stop()


def test_an_eviction_waits_for_the_running_stream(library, files, reference):
    limit = size_of(files["base"]) + max(size_of(files["a"]), size_of(files["b"])) + 1000
    gate = threading.Event()
    server = Server(files, gate=gate, max_memory=limit)
    try:
        server.answer("tiny-a", prompt="", options={})  # load tiny-a (no token: the gate stays shut)
        pieces: list[str] = []
        other: dict[str, httpx.Response] = {}

        def stream_a() -> None:
            body = {"model": "tiny-a", "prompt": PROMPT, "raw": True, "options": OPTIONS}
            with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as r:
                pieces.extend(json.loads(line)["response"] for line in r.iter_lines() if line)

        a = threading.Thread(target=stream_a)
        a.start()
        pool = server.pool
        assert _until(lambda: pool.get("tiny-a").leases == 1)  # the stream holds tiny-a
        b = threading.Thread(target=lambda: other.setdefault("b", server.generate("tiny-b")))
        b.start()
        assert _until(lambda: pool.get("tiny-b") is not None)  # tiny-b waits for memory
        assert pool.get("tiny-a").state is not None and b.is_alive()
        gate.set()
        a.join(60)
        b.join(60)
        assert "".join(pieces) == reference["a"]  # the stream ran to its end
        assert other["b"].json()["response"] == reference["b"]
        assert server.loaded() == {MODEL_NAME, "tiny-b"}
    finally:
        gate.set()
        server.stop()


def _until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_strict_names_are_ollamas_404_and_library_names_still_serve(library, files, reference):
    server = Server(files)
    server.running.app.state.llamita.strict_model_names = True
    try:
        r = server.generate("gpt-4o")
        assert r.status_code == 404
        assert "model 'gpt-4o' not found, try pulling it first" in r.json()["error"]["message"]
        assert server.answer("tiny-a") == reference["a"]
    finally:
        server.stop()


def test_copy_show_delete_through_the_ollama_client(server, reference, files):
    client = server.client
    names = {m.model for m in client.list().models}
    assert {MODEL_NAME, "tiny-a", "tiny-b"} <= names
    client.copy("tiny-a", "tiny-c")
    assert "tiny-c" in {m.model for m in client.list().models}
    assert server.answer("tiny-c") == reference["a"]
    shown = client.show("tiny-b")  # not loaded: read from the file
    assert shown.details.family == "llama" and shown.modelinfo["general.architecture"] == "llama"
    assert "tiny-b" not in server.loaded()
    client.delete("tiny-c")  # loaded: unloaded, then forgotten
    assert server.wait_unloaded("tiny-c")
    assert "tiny-c" not in {m.model for m in client.list().models}
    assert files["a"].exists()  # a copy's files belong to the name it was copied from
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("nothing-here")
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        client.delete(MODEL_NAME)
    assert e.value.status_code == 400


def test_pull_streams_ollamas_progress_then_the_model_serves(server, files, reference, monkeypatch):
    with FakeHub() as hub:
        hub.add("test/tiny-GGUF", {"tiny-Q8_0.gguf": files["b"]})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        steps = list(server.client.pull("hf.co/test/tiny-GGUF:Q8_0", stream=True))
        digest = hashlib.sha256(files["b"].read_bytes()).hexdigest()
        statuses = [s.status for s in steps]
        assert statuses[0] == "pulling manifest" and statuses[-3:] == [
            "verifying sha256 digest",
            "writing manifest",
            "success",
        ]
        progress = [s for s in steps if s.digest]
        assert progress and all(
            s.digest == f"sha256:{digest}"
            and s.status == f"pulling {digest[:12]}"
            and s.total == files["b"].stat().st_size
            for s in progress
        )
        assert progress[-1].completed == progress[-1].total
        assert server.answer("hf.co/test/tiny-GGUF:Q8_0") == reference["b"]
        # Already whole: stream false gives the last object only.
        assert server.client.pull("hf.co/test/tiny-GGUF:Q8_0", stream=False).status == "success"
        r = httpx.post(server.url + "/api/pull", json={"model": "hf.co/test/none-GGUF"}, timeout=60)
        assert r.status_code == 200 and "error" in json.loads(r.text.splitlines()[-1])


def test_concurrent_requests_to_two_models_with_room_for_one_both_complete(library, files, reference):
    # The issue's "concurrent requests to two models both complete". Loads are one at a time
    # (two loads each waiting for the other's room would never end; load_timeout would turn
    # such a deadlock into 504s rather than a hung test).
    limit = size_of(files["base"]) + max(size_of(files["a"]), size_of(files["b"])) + 1000
    server = Server(files, max_memory=limit, load_timeout=60)
    try:
        answers: dict[str, httpx.Response] = {}
        threads = [
            threading.Thread(target=lambda k=k: answers.setdefault(k, server.generate(f"tiny-{k}"))) for k in ("a", "b")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert {k: r.status_code for k, r in answers.items()} == {"a": 200, "b": 200}
        assert {k: r.json()["response"] for k, r in answers.items()} == {"a": reference["a"], "b": reference["b"]}
        assert len(server.loaded() - {MODEL_NAME}) == 1
    finally:
        server.stop()


def test_llamita_serve_serves_the_library_beside_its_default_model(library, files):
    """The command itself (serving/server.py's wiring): a library model by name, answering as
    the offline API does with the same defaults, sized by the estimate for the server's KV
    cache and dtype, unloaded by keep_alive 0."""
    import os
    import signal

    from llamita.engine.loader import resolve_device, resolve_dtype

    from serving_helpers import start_serve_process

    limit = 2 * 2**30
    proc, url = start_serve_process(
        library / "data", "--kv-cache-tokens", str(KV_TOKENS), "--max-memory", str(limit), env=dict(os.environ)
    )
    try:
        client = ollama.Client(host=url, timeout=60)
        want = LLM(files["a"]).generate(PROMPT, SamplingParams(temperature=0, max_tokens=N)).text
        r = client.generate(model="tiny-a", prompt=PROMPT, raw=True, options=OPTIONS)
        assert r.response == want and r.load_duration > 0
        per_element = resolve_dtype("auto", resolve_device("auto")).itemsize
        (entry,) = [m for m in client.ps().models if m.model == "tiny-a"]
        assert entry.size == served_bytes(files["a"], kv_cache_tokens=KV_TOKENS, kv_bytes_per_element=per_element)
        client.generate(model="tiny-a", keep_alive=0)
        assert _until(lambda: "tiny-a" not in {m.model for m in client.ps().models})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_a_created_model_brings_its_settings_to_both_apis(server, files):
    """A model made with `llamita create` answers with its PARAMETERs, SYSTEM and MESSAGEs when a
    request says nothing; the reference is its base given the same things by hand."""
    from llamita.library.create import create_model
    from llamita.library.modelfile import parse_modelfile

    create_model(
        "mario",
        parse_modelfile(
            f"FROM {files['a']}\nPARAMETER temperature 0\n"
            "PARAMETER num_predict 5\nSYSTEM You are Mario\n"
            "MESSAGE user Who are you?\nMESSAGE assistant It's-a me!\n"
        ),
    )
    asked = [{"role": "user", "content": "the cat"}]
    seen = [
        {"role": "system", "content": "You are Mario"},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "It's-a me!"},
        *asked,
    ]
    base = LLM(files["a"], dtype="float32", device="cpu")
    want = base.chat(seen, SamplingParams(temperature=0, max_tokens=5)).text
    ollama_chat = httpx.post(
        server.url + "/api/chat", json={"model": "mario", "messages": asked, "stream": False}, timeout=60
    )
    assert ollama_chat.status_code == 200, ollama_chat.text
    assert ollama_chat.json()["message"]["content"] == want
    assert ollama_chat.json()["eval_count"] == 5
    openai_chat = httpx.post(
        server.url + "/v1/chat/completions", json={"model": "mario", "messages": asked}, timeout=60
    )
    assert openai_chat.status_code == 200, openai_chat.text
    assert openai_chat.json()["choices"][0]["message"]["content"] == want
    # A request's own fields win over the PARAMETERs; its own system message over SYSTEM.
    own = [{"role": "system", "content": "You are Luigi"}, *asked]
    want_own = base.chat([own[0], *seen[1:3], *asked], SamplingParams(temperature=0, max_tokens=2)).text
    r = httpx.post(
        server.url + "/api/chat",
        json={"model": "mario", "messages": own, "stream": False, "options": {"num_predict": 2}},
        timeout=60,
    )
    assert r.json()["message"]["content"] == want_own and r.json()["eval_count"] == 2


def test_a_created_model_runs_with_its_adapters(server, files, reference, tmp_path):
    """A Modelfile's ADAPTER is served as Ollama serves it: every request naming the created
    model runs with it. The reference is the offline API given the base and the adapter by hand."""
    from llamita.library.create import create_model
    from llamita.library.modelfile import parse_modelfile

    cfg = tiny_hf_config()
    adapter = make_peft_adapter(tmp_path / "style", cfg, random_hf_weights(cfg, seed=11), seed=21)
    create_model("styled", parse_modelfile(f"FROM {files['a']}\nADAPTER {adapter}\n"))
    greedy = SamplingParams(temperature=0, max_tokens=N)
    want = LLM(files["a"], dtype="float32", device="cpu", lora=[str(adapter)]).generate(PROMPT, greedy).text
    assert want != reference["a"]  # else the test could not tell the adapter was applied
    assert server.answer("styled") == want
    r = httpx.post(
        server.url + "/v1/completions",
        json={"model": "styled", "prompt": PROMPT, "temperature": 0, "max_tokens": N},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == want
    assert server.answer("tiny-a") == reference["a"]  # the base, served beside it, is unchanged
