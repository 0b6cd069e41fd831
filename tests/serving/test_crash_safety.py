"""SIGKILL while clients write conversations, messages and feedback: every write the server
acknowledged is in the database afterwards and SQLite finds it consistent."""

from __future__ import annotations

import signal
import time

from serving_helpers import ChatWriters, start_serve_process


def test_sigkill_loses_no_acknowledged_write(default_model_path, tmp_path):
    proc, url = start_serve_process(tmp_path, "--kv-cache-tokens", "256")
    writers = ChatWriters(url, 4)
    writers.start()
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    writers.stop()
    assert len(writers.acked["messages"]) > 20, writers.acked  # the kill landed in real traffic
    writers.assert_stored(tmp_path / "llamita.db")
