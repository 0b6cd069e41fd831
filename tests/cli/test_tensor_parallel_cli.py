"""`torchrun --nproc-per-node 2 -m llamita run --tensor-parallel 2` prints what one process
prints (greedy, float32, a tiny random model), and the flag explains itself without torchrun."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import gguf
import pytest

from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

ARGS = ["run", "the cat sat on", "--raw", "-t", "0", "-n", "10", "--dtype", "float32"]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1")


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run in a session of its own, so a hang ends with every rank killed, not just torchrun."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_hf_config(num_key_value_heads=2)
    return write_gguf(tmp_path_factory.mktemp("tp-cli") / "tiny.gguf", cfg,
                      random_hf_weights(cfg, seed=11), gguf.GGMLQuantizationType.Q8_0)


def test_torchrun_two_ranks_print_what_one_process_prints(tiny):
    one = _run([sys.executable, "-m", "llamita", *ARGS, "--model", str(tiny)], _env())
    assert one.returncode == 0, one.stderr
    two = _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                "-m", "llamita", *ARGS, "--model", str(tiny), "--tensor-parallel", "2"], _env())
    assert two.returncode == 0, two.stderr
    assert one.stdout.strip() and two.stdout == one.stdout  # only rank 0 prints


def test_tensor_parallel_without_torchrun_says_how_to_launch(tiny):
    env = {k: v for k, v in _env().items() if k not in ("RANK", "WORLD_SIZE")}
    out = _run([sys.executable, "-m", "llamita", *ARGS, "--model", str(tiny), "--tensor-parallel", "2"], env)
    assert out.returncode == 1
    assert "torchrun --nproc-per-node 2 -m llamita" in out.stderr


def test_torchrun_serve_answers_like_one_process(tiny, tmp_path):
    """Rank 0 serves HTTP; a greedy completion equals the single-process engine's."""
    import httpx

    from llamita.engine.llm import LLM
    from llamita.sampling_params import SamplingParams

    want = LLM(tiny, dtype="float32", device="cpu").generate(
        "the cat sat on", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)).text
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--standalone", "-m", "llamita", "serve", "--model", str(tiny),
                             "--port", str(port), "--dtype", "float32", "--kv-cache-tokens", "256",
                             "--data-dir", str(tmp_path), "--tensor-parallel", "2"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.3)
        r = httpx.post(url + "/v1/completions", timeout=60, json={
            "prompt": "the cat sat on", "max_tokens": 8, "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # every rank: rank 0 stops serving, the rest exit
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
