"""SIGTERM while answers stream and the web chat writes: every client's answer ends properly (a
stream with an error event and [DONE], a whole answer with a 503), the process exits 0 within a
few seconds, and the SQLite store holds every acknowledged write."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx

from serving_helpers import ChatWriters, start_serve_process

CHAT = "/v1/chat/completions"
LONG = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 4000, "ignore_eos": True}
STREAMS = 3


def test_sigterm_ends_streams_and_exits_0(default_model_path, tmp_path):
    log = tmp_path / "serve.log"
    with open(log, "wb") as stderr:
        proc, url = start_serve_process(tmp_path, "--max-running", "4", stderr=stderr)
    try:
        events: list[list[str]] = [[] for _ in range(STREAMS)]
        flowing = threading.Semaphore(0)  # one release per stream with tokens coming
        whole: list[httpx.Response | Exception] = []

        def stream(n: int) -> None:
            with httpx.stream("POST", url + CHAT, json={**LONG, "stream": True}, timeout=30) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events[n].append(line[len("data: ") :])
                        if len(events[n]) == 3:
                            flowing.release()

        def whole_answer() -> None:
            try:
                whole.append(httpx.post(url + CHAT, json=LONG, timeout=30))
            except httpx.HTTPError as e:
                whole.append(e)

        clients = [threading.Thread(target=stream, args=(n,)) for n in range(STREAMS)]
        clients.append(threading.Thread(target=whole_answer))
        writers = ChatWriters(url, 2)
        for t in clients:
            t.start()
        writers.start()
        for _ in range(STREAMS):
            assert flowing.acquire(timeout=60), "the streams did not start"
        time.sleep(0.5)

        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
        exited = time.monotonic() - sent
        for t in clients:
            t.join(10)
        writers.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text(errors="replace")
    print(f"sigterm: exit status {rc} {exited:.2f} s after the signal")
    assert rc == 0, output
    assert exited < 5, (exited, output)
    assert not any(t.is_alive() for t in clients), "a client still waits for its answer"
    for n in range(STREAMS):
        assert events[n][-1] == "[DONE]", events[n][-3:]
        last = json.loads(events[n][-2])
        assert last["error"]["code"] == "server_shutting_down", last
    (answer,) = whole
    assert isinstance(answer, httpx.Response) and answer.status_code == 503, answer
    assert answer.json()["error"]["code"] == "server_shutting_down"
    assert len(writers.acked["messages"]) > 0
    writers.assert_stored(tmp_path / "llamita.db")
    assert "Traceback" not in output, output
