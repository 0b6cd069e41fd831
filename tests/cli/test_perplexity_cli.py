"""`llamita perplexity` as a user runs it: the final line, --json, and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llamita.cli.main import app
from llamita.engine.loader import load_model
from llamita.jobs.perplexity import perplexity

from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

runner = CliRunner()
TEXT = (
    "Rivers carry sand from the mountains to the sea, and over thousands of years the sand "
    "builds deltas where towns grow, fields are planted and birds stop on their long way "
    "south. Engineers who straighten a river often find that the delta starts to shrink. "
) * 3


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    cfg = tiny_hf_config()
    return write_gguf(
        tmp_path_factory.mktemp("ppl_cli") / "tiny.gguf", cfg, random_hf_weights(cfg, seed=5), context_length=128
    )


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "river.txt"
    path.write_text(TEXT + "\n")  # the trailing newline is dropped, as llama.cpp drops it
    return path


def invoke(*args: str):
    return runner.invoke(app, ["perplexity", *args])


def test_json_agrees_with_the_engine(tiny_path, text_file):
    result = invoke(
        str(text_file), "--model", str(tiny_path), "--ctx", "64", "--chunks", "3", "--dtype", "float32", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    loaded = load_model(tiny_path, dtype="float32", device="cpu")
    ref = perplexity(loaded.model, loaded.tokenizer, TEXT, n_ctx=64, chunks=3)
    assert data["perplexity"] == pytest.approx(ref.perplexity, rel=1e-6)
    assert data["perplexity_stderr"] == pytest.approx(ref.perplexity_stderr, rel=1e-6)
    assert (data["n_chunks"], data["n_ctx"], data["tokens_scored"]) == (3, 64, 93)
    assert data["text_tokens"] == ref.text_tokens == len(loaded.tokenizer.encode(TEXT))
    assert data["dtype"] == "float32"


def test_text_output_has_the_final_line(tiny_path, text_file):
    result = invoke(str(text_file), "-m", str(tiny_path), "-c", "64", "--chunks", "2", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("perplexity: ") and " ± " in line
    assert line.endswith("(2 chunks of 64 tokens, 62 tokens scored)")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ctx", "63"], "invalid parameter 'n_ctx': must be an even number"),
        (["--ctx", "1"], "invalid parameter 'n_ctx'"),
        (["--ctx", "256"], "more than the model's context window of 128"),
        (["--chunks", "0"], "invalid parameter 'chunks'"),
    ],
)
def test_bad_settings_are_one_line_errors(tiny_path, text_file, args, message):
    result = invoke(str(text_file), "--model", str(tiny_path), *args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_missing_short_and_binary_files(tiny_path, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\xff\xfe\x00 not utf-8" * 10)
    cases = [
        (tmp_path / "missing.txt", "text file not found"),
        (tmp_path, "is a folder"),
        (binary, "is not UTF-8 text"),
        (short, "it has 15 tokens but one window of n_ctx=64 needs at least 64"),
    ]
    for path, message in cases:
        result = invoke(str(path), "--model", str(tiny_path), "--ctx", "64")
        assert result.exit_code == 1, path
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) <= 4  # model line, error (rich may wrap)


def test_help_explains_units_and_defaults():
    result = runner.invoke(app, ["perplexity", "--help"])
    assert result.exit_code == 0
    options = ("--ctx", "--chunks", "--json", "--kl-divergence-base", "--kl-divergence")
    for text in (*options, "nats per token", "second half", "512", "default"):
        assert text in result.stdout, text


def test_kl_divergence_base_then_compare(tiny_path, text_file, tmp_path):
    from llamita.jobs.kl_divergence import kl_divergence

    base = tmp_path / "base.kld"
    common = ["--model", str(tiny_path), "--dtype", "float32"]
    made = invoke(str(text_file), *common, "-c", "64", "--chunks", "3", "--kl-divergence-base", str(base), "--json")
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["kl_divergence_base"] == str(base) and base.exists()

    result = invoke("--kl-divergence", "--kl-divergence-base", str(base), *common, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    loaded = load_model(tiny_path, dtype="float32", device="cpu")
    ref = kl_divergence(loaded.model, loaded.tokenizer, base)
    assert data["mean_kld"] == pytest.approx(ref.mean_kld, abs=1e-9) and abs(data["mean_kld"]) < 1e-5
    assert (data["n_ctx"], data["n_chunks"], data["tokens_scored"], data["same_top_p"]) == (64, 3, 93, 1.0)
    assert data["perplexity"] == pytest.approx(json.loads(made.stdout)["perplexity"], rel=1e-6)

    text = invoke(str(text_file), "--kl-divergence", "--kl-divergence-base", str(base), *common, "-c", "64")
    assert text.exit_code == 0, text.output  # the text that made the base, checked and accepted
    for label in ("Mean PPL(Q)", "Mean PPL(base)", "Mean    KLD:", "Median  KLD:", "99.0%   KLD:", "Same top p:"):
        assert label in text.stdout, label


def test_kl_divergence_mistakes_are_one_line_errors(tiny_path, text_file, tmp_path):
    base = tmp_path / "base.kld"
    assert invoke(str(text_file), "-m", str(tiny_path), "-c", "64", "--kl-divergence-base", str(base)).exit_code == 0
    other = tmp_path / "other.txt"
    other.write_text("Completely different words about mountains and goats. " * 10)
    kld = ["--kl-divergence", "--kl-divergence-base"]
    cases = [
        (["--kl-divergence"], "needs --kl-divergence-base FILE"),
        ([*kld, str(tmp_path / "none.kld")], "not found: write it first"),
        ([*kld, str(text_file)], "does not start with _logits_"),
        ([*kld, str(base), "-c", "32"], "written with windows of 64 tokens"),
        ([str(other), *kld, str(base)], "does not tokenize to the tokens the base"),
        ([], "give a text file to score"),
    ]
    for args, message in cases:
        result = invoke(*args, "-m", str(tiny_path))
        assert result.exit_code == 1, args
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.output
