"""What a newcomer trips on in the command line (issue 29): threads, escapes in options, Ctrl-C
in the chat, one-line errors for a GPU that is not there, checks before a slow load, and lines
that stay whole when stderr is piped."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from llamita.cli.escapes import process_escapes
from llamita.cli.main import app
from llamita.engine import threads

from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    cfg = tiny_hf_config()
    return write_gguf(tmp_path_factory.mktemp("edges") / "tiny.gguf", cfg, random_hf_weights(cfg), context_length=4096)


@pytest.mark.parametrize(
    "text, want",
    [
        (r"\n\n", "\n\n"),
        (r"a\tb\r\n", "a\tb\r\n"),
        (r"say \"hi\" \'x\'", "say \"hi\" 'x'"),
        (r"\x41\x7e", "A~"),
        (r"back\\slash\\n", "back\\slash\\n"),
        # Kept as typed: unknown escapes, a \x without two hex digits, non-ASCII text.
        (r"C:\Users\new", "C:\\Users\new"),
        (r"\xZZ \q", r"\xZZ \q"),
        ("señal ñ", "señal ñ"),
    ],
)
def test_escapes_as_llama_cpp_reads_them(text, want):
    assert process_escapes(text) == want


def test_stop_escapes_reach_the_stop_strings(tiny_path):
    # README: llamita run "Once upon a time" --raw --max-tokens 60 --stop "\n\n" — bash passes the
    # backslashes through, so the option must be unescaped to mean a blank line. Checked end to
    # end with \xHH naming a character the greedy answer writes: escaped it stops there; with
    # --no-escape the four characters are taken literally, never appear, and nothing stops.
    base = [
        "run",
        "Once upon a time",
        "--raw",
        "--model",
        str(tiny_path),
        "--max-tokens",
        "40",
        "--temperature",
        "0",
        "--dtype",
        "float32",
    ]
    plain = runner.invoke(app, base)
    assert plain.exit_code == 0, plain.output
    words = plain.stdout.rstrip("\n")
    stop_at = next(c for c in words[1:] if c.strip() and c.isascii())
    escape = f"\\x{ord(stop_at):02x}"
    stopped = runner.invoke(app, base + ["--stop", escape])
    assert stopped.exit_code == 0, stopped.output
    assert stopped.stdout == words[: words.index(stop_at)] + "\n"
    assert runner.invoke(app, base + ["--stop", escape, "--no-escape"]).stdout == plain.stdout


def test_default_threads_leave_out_busy_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "_torch_default", lambda: 8)
    for load, want in [(0.0, 8), (0.4, 8), (2.6, 5), (7.9, 1), (30.0, 1)]:
        monkeypatch.setattr(threads, "busy_cores", lambda load=load: load)
        assert threads.default_threads() == want, load
    monkeypatch.setattr(threads, "_torch_default", lambda: 4)  # never more than torch's own count
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    assert threads.default_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's (or torchrun's) choice stands
    monkeypatch.setattr(threads, "busy_cores", lambda: 30.0)
    assert threads.default_threads() == 4


@pytest.mark.parametrize(
    "command",
    ["run", "chat", "serve", "bench", "perplexity", "next", "lens", "attention", "sample", "embed", "analogy"],
)
def test_every_command_that_runs_the_model_takes_threads(command):
    out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
    assert "--threads" in out


def test_threads_are_used_and_reported(tiny_path):
    import torch

    before = torch.get_num_threads()
    try:
        result = runner.invoke(app, ["run", "hi", "--model", str(tiny_path), "-n", "2", "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1 and "· 1 thread ·" in result.stderr
        # Which kernels and which decode path run, said on stderr (never a guess why it is slow).
        from llamita.kernels import native

        assert f"llamita kernels: {native.kernel_level()}" in result.stderr or "torch's kernels" in result.stderr
        assert "· eager decode ·" in result.stderr
        bad = runner.invoke(app, ["run", "hi", "--model", str(tiny_path), "--threads", "0"])
        assert bad.exit_code != 0 and "Traceback" not in bad.output
    finally:
        torch.set_num_threads(before)


def test_missing_gpu_is_one_line(tiny_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    for device in ("cuda", "cuda:1"):
        result = runner.invoke(app, ["run", "hi", "--model", str(tiny_path), "--device", device])
        assert result.exit_code == 1
        assert "invalid parameter 'device'" in result.stderr and "--device cpu" in result.stderr
        assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_perplexity_refuses_a_short_text_before_loading(tiny_path, tmp_path, monkeypatch):
    import llamita.engine.loader as loader

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the text was checked")

    monkeypatch.setattr(loader, "load_model", no_loading)
    short = tmp_path / "short.txt"
    short.write_text("Too short for a window.")
    result = runner.invoke(app, ["perplexity", str(short), "--model", str(tiny_path), "--ctx", "512"])
    assert result.exit_code == 1, result.output
    assert "invalid parameter 'text'" in result.stderr and "512" in result.stderr


def test_piped_stats_line_stays_whole(tiny_path):
    proc = subprocess.run(
        ["llamita", "run", "hi", "--model", str(tiny_path), "-n", "3", "--temperature", "0", "--dtype", "float32"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": ""},
    )
    assert proc.returncode == 0, proc.stderr
    (stats,) = [line for line in proc.stderr.splitlines() if "tokens/s" in line]
    assert "finish: length" in stats  # one line, however long, when stderr is not a terminal


def _wait_for(stream, needle: str, timeout: float) -> str:
    """Read the pipe `stream` until `needle` (or, for "", any output) appears; what was read."""
    seen, deadline = "", time.monotonic() + timeout
    while not seen or needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise AssertionError(f"no {needle!r} within {timeout} s; got {seen[-500:]!r}")
        chunk = os.read(stream.fileno(), 4096).decode(errors="replace")
        if not chunk:
            raise AssertionError(f"stream closed before {needle!r}; got {seen[-500:]!r}")
        seen += chunk
    return seen


def test_ctrl_c_stops_the_answer_not_the_chat(tiny_path):
    args = ["--model", str(tiny_path), "--temperature", "0", "--dtype", "float32"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamita", "chat", *args, "-n", "3000"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # A long answer (no end of turn), interrupted once it has started.
        proc.stdin.write(b"/params ignore_eos=true\ntell me a long story\n")
        proc.stdin.flush()
        _wait_for(proc.stdout, "max_tokens=3000", 120)  # the /params line
        _wait_for(proc.stdout, "", 120)  # the answer has started
        proc.send_signal(signal.SIGINT)
        _wait_for(proc.stderr, "answer stopped", 60)
        assert proc.poll() is None  # still chatting
        out, err = proc.communicate(b"/reset\n/params max_tokens=4 ignore_eos=false\nhi\n", timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    # After the interruption the engine answers as a fresh one does.
    want = runner.invoke(app, ["run", "hi", *args, "-n", "4"]).stdout.rstrip("\n")
    assert out.decode().rstrip("\n").endswith(want), (out.decode()[-300:], want)
