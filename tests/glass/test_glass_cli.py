"""The glass-box commands as a user runs them, on a tiny random GGUF: tables, --json that
parses, --out pictures, one-line errors; and sample_view's seeds and greedy agreement."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llamita.cli.main import app
from llamita.glass.variability import sample_view

from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    cfg = tiny_hf_config()
    return str(
        write_gguf(tmp_path_factory.mktemp("glass") / "tiny.gguf", cfg, random_hf_weights(cfg), context_length=128)
    )


def invoke(tiny_path, *args: str):
    result = runner.invoke(app, [*args, "--model", tiny_path, "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    return result


def as_json(tiny_path, *args: str) -> dict:
    return json.loads(invoke(tiny_path, *args, "--json").stdout)


def test_tokenize(tiny_path):
    result = runner.invoke(app, ["tokenize", "the cat", "--compare", "a hat", "--model", tiny_path])
    assert result.exit_code == 0, result.output
    assert "tokens/word" in result.stdout
    data = json.loads(runner.invoke(app, ["tokenize", "the cat", "--model", tiny_path, "--json"]).stdout)
    assert data["texts"][0]["n_tokens"] == len(data["texts"][0]["ids"])


def test_next_table_json_and_chart(tiny_path, tmp_path):
    out = tmp_path / "next.png"
    result = invoke(
        tiny_path, "next", "the cat", "--raw", "-t", "0.5", "-t", "1", "--top-k", "3", "--top", "4", "--out", str(out)
    )
    assert "entropy (bits)" in result.stdout
    assert out.read_bytes().startswith(PNG)
    data = as_json(tiny_path, "next", "hello", "--top", "3")
    assert len(data["tokens"]) == 3 and data["distributions"][0]["temperature"] == 1.0


def test_lens(tiny_path):
    data = as_json(tiny_path, "lens", "the cat", "--raw")
    assert len(data["layers"]) == data["n_layers"] + 1
    assert data["layers"][-1]["top"][0]["id"] == data["prediction"]["id"]
    assert "logit lens" in invoke(tiny_path, "lens", "the cat", "--raw").stdout


def test_attention_json_and_heatmap(tiny_path, tmp_path):
    out = tmp_path / "map.png"
    result = invoke(
        tiny_path,
        "attention",
        "the cat sat",
        "--raw",
        "--token",
        "sat",
        "--to",
        "cat",
        "--layer",
        "1",
        "--head",
        "0",
        "--out",
        str(out),
    )
    assert "attends to" in result.stdout and "heads where" in result.stdout
    assert out.read_bytes().startswith(PNG)
    data = as_json(tiny_path, "attention", "the cat sat", "--raw")
    assert "weights" not in data and len(data["matrix"]) == len(data["tokens"])


def test_embed_and_analogy(tiny_path):
    data = as_json(tiny_path, "embed", "the cat", "a hat")
    assert len(data["similarity"]) == 2 and len(data["embeddings"][0]) == 64
    result = invoke(tiny_path, "analogy", "the", "a", "in", "--expect", "he")
    assert "ranks #" in result.stdout
    assert len(as_json(tiny_path, "analogy", "the", "a", "in", "--top", "3")["answers"]) == 3


def test_sample(tiny_path):
    data = as_json(
        tiny_path,
        "sample",
        "the cat",
        "--raw",
        "--n",
        "2",
        "-t",
        "0.1",
        "-t",
        "1.5",
        "--max-tokens",
        "4",
        "--seed",
        "1",
    )
    assert [r["temperature"] for r in data["runs"]] == [0.1, 1.5]
    assert all(len(r["samples"]) == 2 and "distinct_2" in r for r in data["runs"])
    assert "variability" in invoke(tiny_path, "sample", "hi", "--n", "2", "--max-tokens", "3").stdout


def test_sample_view_greedy_samples_agree_and_seeds_repeat(tiny_path):
    from llamita import LLM

    llm = LLM(tiny_path, dtype="float32", device="cpu")
    kw = dict(temperatures=[0.0, 1.5], n=3, max_tokens=6, seed=7, raw=True)
    greedy, hot = sample_view(llm, "the cat", **kw)["runs"]
    assert len({tuple(s["token_ids"]) for s in greedy["samples"]}) == 1
    assert greedy["mean_jaccard"] == 1.0
    again = sample_view(llm, "the cat", **kw)["runs"][1]
    assert [s["token_ids"] for s in again["samples"]] == [s["token_ids"] for s in hot["samples"]]


@pytest.mark.parametrize(
    "args, message",
    [
        (["attention", "the cat", "--layer", "99"], "invalid parameter 'layer'"),
        (["attention", "the cat", "--token", "dog"], "'dog' is not in the text"),
        (["next", "the cat", "-t", "-1"], "invalid parameter 'temperature'"),
        (["next", "the cat", "--top-p", "0"], "invalid parameter 'top_p'"),
        (["sample", "the cat", "--n", "0"], "invalid parameter 'n'"),
    ],
)
def test_one_line_errors(tiny_path, args, message):
    result = runner.invoke(app, [*args, "--model", tiny_path])
    assert result.exit_code == 1, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_next_lens_attention_take_lora(tiny_path, tmp_path):
    """--lora shows the model with the adapter: each command's JSON equals the view of
    LLM(lora=...) and differs from the base model's."""
    pytest.importorskip("peft")
    import numpy as np

    from llamita.api.llm import LLM
    from llamita.glass.attention import attention_view
    from llamita.glass.next_token import next_token_view

    from lora_models import make_peft_adapter

    cfg = tiny_hf_config()
    adapter = str(make_peft_adapter(tmp_path / "tone", cfg, random_hf_weights(cfg), seed=7))
    llm = LLM(tiny_path, dtype="float32", device="cpu", lora=adapter)
    text = "the cat sat"
    got = as_json(tiny_path, "next", text, "--raw", "--lora", adapter)
    want = next_token_view(llm, text, raw=True)
    base = as_json(tiny_path, "next", text, "--raw")
    assert [t["id"] for t in got["tokens"]] == [t["id"] for t in want["tokens"]]
    assert got["distributions"][0]["probs"] == pytest.approx(want["distributions"][0]["probs"], abs=1e-5)
    assert got["distributions"][0]["probs"] != pytest.approx(base["distributions"][0]["probs"], abs=1e-4)
    got = as_json(tiny_path, "attention", text, "--raw", "--layer", "1", "--lora", adapter)
    np.testing.assert_allclose(got["matrix"], attention_view(llm, text, raw=True, layer=1)["matrix"], atol=1e-5)
    lens = as_json(tiny_path, "lens", text, "--raw", "--lora", adapter)
    assert lens["prediction"]["id"] == want["tokens"][0]["id"]
