"""`torchrun --nproc-per-node 2 -m llamita run --tensor-parallel 2` prints what one process
prints (greedy, float32, a tiny random model), and the flag explains itself without torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

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
