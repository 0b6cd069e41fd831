"""`llamita finetune` on a tiny random model: the loss falls, the eval loss is reported, an
interrupted run resumes to the same adapter, the saved adapter loads in peft and gives
llamita's logits, and a quantized base trains through its compact weights."""

from __future__ import annotations

import json

import gguf
import pytest
import torch
from typer.testing import CliRunner

from llamita.cli.main import app
from llamita.engine.loader import load_model
from llamita.engine.lora_attach import attach_loras
from llamita.jobs.finetune import FinetuneConfig, encode_example, finetune, load_examples

from lora_models import peft_model, rel_err
from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

pytest.importorskip("peft")
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetune")
    cfg = tiny_hf_config()
    sd = random_hf_weights(cfg, seed=17)
    path = write_gguf(tmp / "base.gguf", cfg, sd)
    rows = [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": "the answer"},
            ]
        }
        for i in range(12)
    ]
    rows.append({"prompt": "hola", "completion": "the answer"})
    rows.append(
        {"messages": [{"role": "user", "content": "bad"}, {"role": "assistant", "content": "xyz"}], "rating": -1}
    )  # a thumbs-down from the web chat's export: left out
    data = tmp / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    evals = tmp / "eval.jsonl"
    evals.write_text(json.dumps({"prompt": "question 99", "completion": "the answer"}) + "\n")
    return tmp, cfg, sd, path, data, evals


FAST = dict(rank=4, alpha=8.0, lr=1e-2, batch=4)


def test_loss_only_on_assistant_tokens(tiny):
    tmp, cfg, sd, path, data, _ = tiny
    tok = load_model(path, dtype="float32", device="cpu").tokenizer
    ex = encode_example(
        tok,
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "the answer"},
            {"role": "user", "content": "more"},
            {"role": "assistant", "content": "no", "weight": 0},
        ],
        512,
    )
    targets = [t for t, m in zip(ex.ids, ex.loss_mask) if m]
    assert tok.decode(targets) == "the answer<|im_end|>\n"
    assert len(load_examples(data, tok, 512)) == 13  # 12 chats + prompt/completion, not the thumbs-down


def test_finetune_lowers_loss_and_saves_a_peft_adapter(tiny):
    tmp, cfg, sd, path, data, evals = tiny
    out = tmp / "adapter"
    result = finetune(
        path, data, out, FinetuneConfig(max_steps=8, checkpoint_every=4, **FAST), eval_data=evals, dtype="float32"
    )
    assert result.steps == 8 and len(result.losses) == 8
    assert sum(result.losses[-2:]) < 0.7 * sum(result.losses[:2])
    assert [s for s, _ in result.eval_losses] == [4, 8] and result.eval_losses[1][1] < result.eval_losses[0][1]
    # The folder is a PEFT adapter: peft + transformers give llamita's logits with it.
    loaded = load_model(path, dtype="float32", device="cpu")
    attach_loras(loaded.model, loaded.config, [out], combine=True)
    tokens = torch.randint(0, cfg["vocab_size"], (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = peft_model(cfg, sd, out)(tokens).logits
        got = loaded.model(tokens, adapters=torch.zeros(1, dtype=torch.long))
        base = loaded.model(tokens)
    assert rel_err(got, want) <= 1e-4 and rel_err(base, want) > 1e-3


def test_interrupted_run_resumes_to_the_same_adapter(tiny):
    from safetensors.torch import load_file

    tmp, cfg, sd, path, data, _ = tiny
    config = FinetuneConfig(max_steps=5, checkpoint_every=2, **FAST)
    whole = finetune(path, data, tmp / "whole", config, dtype="float32")

    def interrupt(report):
        if report.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(path, data, tmp / "cut", config, dtype="float32", on_step=interrupt)
    assert (tmp / "cut" / "checkpoint-2").is_dir() and not (tmp / "cut" / "adapter_config.json").exists()
    again = finetune(path, data, tmp / "cut", config, dtype="float32", resume=True)
    assert again.resumed_from == 2 and again.steps == 5
    assert again.losses == pytest.approx(whole.losses[2:], rel=1e-5)
    a = load_file(str(tmp / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp / "cut" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_quantized_base_trains_through_compact_weights(tiny, tmp_path):
    from llamita.kernels.int4 import int4_supported

    if not int4_supported():
        pytest.skip("torch's int4 CPU kernel is not available here")
    _, cfg, sd, _, data, _ = tiny
    q4 = write_gguf(tmp_path / "q4.gguf", cfg, sd, Q.Q4_1)
    result = finetune(
        q4, data, tmp_path / "q", FinetuneConfig(max_steps=6, checkpoint_every=0, **FAST), dtype="bfloat16"
    )
    assert sum(result.losses[-2:]) < 0.7 * sum(result.losses[:2])


def test_cli_finetune(tiny):
    tmp, cfg, sd, path, data, evals = tiny
    out = tmp / "cli"
    r = CliRunner().invoke(
        app,
        [
            "finetune",
            "--model",
            str(path),
            "--data",
            str(data),
            "--eval",
            str(evals),
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--rank",
            "2",
            "--dtype",
            "float32",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "2 steps" in r.output and "eval loss" in r.output
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2
