"""LLM(lora=...) and `llamita run/chat --lora`: greedy generation with an adapter equals greedy
decoding of peft + transformers."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from llamita import LLM
from llamita.cli.main import app
from llamita.sampling_params import SamplingParams

from lora_models import make_peft_adapter, peft_model
from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora_gen")
    cfg = tiny_hf_config()
    sd = random_hf_weights(cfg, seed=7)
    return cfg, sd, write_gguf(tmp / "tiny.gguf", cfg, sd), make_peft_adapter(tmp / "tone", cfg, sd, seed=4)


def greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_llm_with_lora_generates_like_peft(tiny):
    cfg, sd, path, folder = tiny
    prompt = [40, 70, 90, 100, 33]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    llm = LLM(path, dtype="float32", device="cpu", lora=folder)
    assert llm.adapter == "tone"
    ours = llm.generate(prompt_token_ids=[prompt, prompt[:3]], params=params)
    assert ours[0].token_ids == greedy(peft_model(cfg, sd, folder), prompt, 10)
    assert ours[1].token_ids == greedy(peft_model(cfg, sd, folder), prompt[:3], 10)
    base = LLM(path, dtype="float32", device="cpu").generate(prompt_token_ids=prompt, params=params)
    assert base.token_ids != ours[0].token_ids  # the adapter changed the answer


def test_run_and_chat_take_lora(tiny):
    cfg, sd, path, folder = tiny
    runner = CliRunner()
    common = ["--model", str(path), "--dtype", "float32", "--lora", f"{folder}:1.0"]
    run = runner.invoke(app, ["run", "the cat", "--raw", "--max-tokens", "6", "--temperature", "0", *common])
    assert run.exit_code == 0, run.output
    llm = LLM(path, dtype="float32", device="cpu", lora=folder)
    want = llm.generate("the cat", SamplingParams(temperature=0, max_tokens=6)).text
    assert run.stdout.startswith(want)
    chat = runner.invoke(app, ["chat", "--max-tokens", "4", "--temperature", "0", *common], input="hola\n")
    assert chat.exit_code == 0, chat.output
    missing = runner.invoke(app, ["run", "x", "--model", str(path), "--lora", str(path.parent / "nope")])
    assert missing.exit_code == 1 and "LoRA adapter not found" in missing.output
