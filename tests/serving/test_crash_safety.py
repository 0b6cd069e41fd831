"""SIGKILL while clients write conversations, messages and feedback: every write the server
acknowledged is in the database afterwards and SQLite finds it consistent."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx


def _start(tmp_path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llamita.cli.main", "serve", "--port", str(port),
                             "--kv-cache-tokens", "256", "--data-dir", str(tmp_path)],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
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


def test_sigkill_loses_no_acknowledged_write(default_model_path, tmp_path):
    proc, url = _start(tmp_path)
    acked: dict[str, list] = {"conversations": [], "messages": [], "feedback": []}
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=5) as http:
            while not stop.is_set():
                try:
                    c = http.post("/ui/conversations", json={"title": f"c{n}"})
                    if c.status_code != 201:
                        continue
                    cid = c.json()["id"]
                    with lock:
                        acked["conversations"].append(cid)
                    for i in range(3):
                        m = http.post(f"/ui/conversations/{cid}/messages",
                                      json={"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"})
                        if m.status_code != 201:
                            break
                        mid = m.json()["id"]
                        with lock:
                            acked["messages"].append(mid)
                        if i % 2:
                            f = http.put(f"/ui/messages/{mid}/feedback", json={"rating": 1, "comment": "ok"})
                            if f.status_code == 200:
                                with lock:
                                    acked["feedback"].append(mid)
                except httpx.TransportError:
                    return  # the server is gone

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked["messages"]) > 20, acked  # the kill landed in the middle of real traffic

    db = sqlite3.connect(tmp_path / "llamita.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conversations = {r[0] for r in db.execute("SELECT id FROM conversations")}
    messages = {r[0] for r in db.execute("SELECT id FROM messages")}
    feedback = {r[0] for r in db.execute("SELECT message_id FROM feedback")}
    assert set(acked["conversations"]) <= conversations
    assert set(acked["messages"]) <= messages
    assert set(acked["feedback"]) <= feedback
