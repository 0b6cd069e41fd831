"""`torchrun --nproc-per-node 2 -m llamita run|chat|serve --tensor-parallel 2` answers what one
process answers (greedy, float32, a tiny random model, with and without a LoRA adapter), and
the flag explains itself without torchrun."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import gguf
import pytest

from lora_models import make_peft_adapter
from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

ARGS = ["run", "the cat sat on", "--raw", "-t", "0", "-n", "10", "--dtype", "float32"]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1")


def _run(cmd: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run in a session of its own, so a hang ends with every rank killed, not just torchrun."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(stdin, timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "llamita"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_hf_config(num_key_value_heads=2)
    root = tmp_path_factory.mktemp("tp-cli")
    return write_gguf(root / "tiny.gguf", cfg, random_hf_weights(cfg, seed=11), gguf.GGMLQuantizationType.Q8_0)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A PEFT adapter named "tone" for the tiny model's shape."""
    pytest.importorskip("peft")
    cfg = tiny_hf_config(num_key_value_heads=2)
    return make_peft_adapter(
        tmp_path_factory.mktemp("tp-cli-lora") / "tone", cfg, random_hf_weights(cfg, seed=11), seed=4
    )


def _one_and_two(args: list[str], stdin: str | None = None) -> tuple[str, str]:
    """stdout of one process and of 2 torchrun ranks, both runs successful."""
    one = _run([sys.executable, "-m", "llamita", *args], _env(), stdin)
    assert one.returncode == 0, one.stderr
    two = _run([*TORCHRUN, *args, "--tensor-parallel", "2"], _env(), stdin)
    assert two.returncode == 0, two.stderr
    return one.stdout, two.stdout


def test_torchrun_two_ranks_print_what_one_process_prints(tiny):
    one, two = _one_and_two([*ARGS, "--model", str(tiny)])
    assert one.strip() and two == one  # only rank 0 prints


def test_torchrun_run_with_lora_prints_what_one_process_prints(tiny, adapter):
    one, two = _one_and_two([*ARGS, "--model", str(tiny), "--lora", str(adapter)])
    assert one.strip() and two == one
    base = _run([sys.executable, "-m", "llamita", *ARGS, "--model", str(tiny)], _env())
    assert base.stdout != one  # the adapter is applied, not dropped on both sides


def test_torchrun_chat_answers_like_one_process(tiny):
    """Rank 0 reads the conversation from stdin; two turns, the second with the first's history."""
    turns = "the cat sat on\nand then\n/exit\n"
    one, two = _one_and_two(["chat", "-t", "0", "-n", "6", "--dtype", "float32", "--model", str(tiny)], turns)
    assert one.strip() and two == one


def test_tensor_parallel_without_torchrun_says_how_to_launch(tiny):
    env = {k: v for k, v in _env().items() if k not in ("RANK", "WORLD_SIZE")}
    out = _run([sys.executable, "-m", "llamita", *ARGS, "--model", str(tiny), "--tensor-parallel", "2"], env)
    assert out.returncode == 1
    assert "torchrun --nproc-per-node 2 -m llamita" in out.stderr


def test_torchrun_serve_answers_like_one_process(tiny, adapter, tmp_path):
    """Rank 0 serves HTTP; greedy completions, with and without the LoRA adapter the request
    picks, equal the single-process engine's; so do the glass views (attention of one head,
    logit lens, next-token probabilities) and a prompt's log-probabilities (`echo`)."""
    import httpx
    import numpy as np

    from llamita.api.llm import LLM
    from llamita.engine.scoring import prompt_logprobs
    from llamita.glass.attention import attention_view
    from llamita.glass.lens import logit_lens
    from llamita.glass.next_token import next_token_view
    from llamita.sampling_params import SamplingParams

    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    one = LLM(tiny, dtype="float32", device="cpu")
    want = one.generate("the cat sat on", greedy).text
    text = "the cat sat on"
    want_attention = attention_view(one, text, raw=True, layer=1, head=3)["matrix"]
    want_lens = [[t["id"] for t in stage["top"]] for stage in logit_lens(one, text, raw=True, top=2)["layers"]]
    want_next = next_token_view(one, text, raw=True, temperatures=[1.0], top=5)
    want_lora = LLM(tiny, dtype="float32", device="cpu", lora=adapter).generate("the cat sat on", greedy).text
    assert want_lora != want
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            *TORCHRUN,
            "serve",
            "--model",
            str(tiny),
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--kv-cache-tokens",
            "256",
            "--data-dir",
            str(tmp_path),
            "--tensor-parallel",
            "2",
            "--lora",
            str(adapter),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
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
        for lora, expected in [(None, want), ("tone", want_lora)]:
            r = httpx.post(
                url + "/v1/completions",
                timeout=60,
                json={"prompt": "the cat sat on", "max_tokens": 8, "temperature": 0, "ignore_eos": True, "lora": lora},
            )
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == expected, lora
        glass = {
            name: httpx.post(f"{url}/glass/{name}", timeout=60, json=body)
            for name, body in [
                ("attention", {"text": text, "raw": True, "layer": 1, "head": 3}),
                ("lens", {"prompt": text, "raw": True, "top": 2}),
                ("next", {"prompt": text, "raw": True, "temperature": 1.0, "top": 5}),
            ]
        }
        assert all(r.status_code == 200 for r in glass.values()), {k: r.text for k, r in glass.items()}
        np.testing.assert_allclose(glass["attention"].json()["matrix"], want_attention, atol=1e-5)
        assert [[t["id"] for t in stage["top"]] for stage in glass["lens"].json()["layers"]] == want_lens
        got_next = glass["next"].json()
        assert [t["id"] for t in got_next["tokens"]] == [t["id"] for t in want_next["tokens"]]
        assert got_next["distributions"][0]["probs"] == pytest.approx(want_next["distributions"][0]["probs"], abs=1e-5)
        r = httpx.post(
            url + "/v1/completions",
            timeout=60,
            json={"prompt": text, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 2},
        )
        assert r.status_code == 200, r.text
        echoed = r.json()["choices"][0]["logprobs"]["token_logprobs"]
        ids = one.encode_prompt(text)
        want_scores = [None] + [s.logprob for s in prompt_logprobs(one.loaded.model, ids, one.tokenizer.vocab_size)[1:]]
        assert echoed[: len(ids)] == pytest.approx(want_scores, abs=1e-4)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # every rank: rank 0 stops serving, the rest exit
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
