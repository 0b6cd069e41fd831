"""`llamita serve` starts a real server process on loopback and answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
from typer.testing import CliRunner

from llamita.cli.main import app


def test_help_names_defaults_and_units():
    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for text in ("127.0.0.1", "8080", "--api-key", "--max-queue", "--kv-cache-tokens", "--max-running", "--dtype",
                 "--data-dir"):
        assert text in out


def test_serve_process_answers(default_model_path, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LLAMITA_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "llamita.cli.main", "serve", "--port", str(port),
                             "--kv-cache-tokens", "1024", "--dtype", "float32", "--model-name", "smol",
                             "--data-dir", str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.2)
        headers = {"Authorization": "Bearer k"}
        r = httpx.post(url + "/v1/completions", json={"model": "smol", "prompt": "Hi", "max_tokens": 2},
                       headers=headers, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
        assert httpx.get(url + "/v1/models", timeout=10).status_code == 401  # the key from the env
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
