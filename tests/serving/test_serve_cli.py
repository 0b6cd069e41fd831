"""`llamita serve` starts a real server process on loopback and answers."""

from __future__ import annotations

import signal
import subprocess

import httpx
from typer.testing import CliRunner

from llamita.cli.main import app

from serving_helpers import start_serve_process


def test_help_names_defaults_and_units():
    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for text in (
        "127.0.0.1",
        "8080",
        "--api-key",
        "--max-queue",
        "--kv-cache-tokens",
        "--max-running",
        "--dtype",
        "--data-dir",
    ):
        assert text in out


def test_serve_process_answers(tmp_path):
    proc, url = start_serve_process(
        tmp_path,
        "--kv-cache-tokens",
        "1024",
        "--dtype",
        "float32",
        "--model-name",
        "smol",
        env={"LLAMITA_API_KEY": "k"},
    )
    try:
        headers = {"Authorization": "Bearer k"}
        r = httpx.post(
            url + "/v1/completions",
            json={"model": "smol", "prompt": "Hi", "max_tokens": 2},
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
        assert httpx.get(url + "/v1/models", timeout=10).status_code == 401  # the key from the env
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
