"""The `llamita` command as a user runs it: answers, info, chat, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from llamita.cli.main import app

from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    cfg = tiny_hf_config()
    return write_gguf(tmp_path_factory.mktemp("cli") / "tiny.gguf", cfg, random_hf_weights(cfg), context_length=64)


def test_run_answers_with_paris_from_the_installed_command():
    # The real entry point, in a fresh process, as the README's quick start runs it.
    proc = subprocess.run(
        ["llamita", "run", "What is the capital of France? Answer in one sentence.", "--temperature", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "tokens/s" in proc.stderr and "tokens/s" not in proc.stdout


def test_run_raw_with_stop_and_seed(tiny_path):
    args = [
        "run",
        "the cat",
        "--raw",
        "--model",
        str(tiny_path),
        "--max-tokens",
        "10",
        "--seed",
        "3",
        "--temperature",
        "1.0",
        "--dtype",
        "float32",
    ]
    a, b = invoke(*args), invoke(*args)
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout  # same seed, same text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature", "-1"], "invalid parameter 'temperature'"),
        (["--top-p", "0"], "invalid parameter 'top_p'"),
        (["--top-k", "-3"], "invalid parameter 'top_k'"),
        (["--max-tokens", "0"], "invalid parameter 'max_tokens'"),
        (["--dtype", "int3"], "invalid parameter 'dtype'"),
    ],
)
def test_bad_parameters_are_one_line_errors(tiny_path, args, message):
    result = invoke("run", "hi", "--model", str(tiny_path), *args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_bad_model_files_are_one_line_errors(tmp_path, tiny_path):
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello, I am not a model\n" * 10)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_path.read_bytes()[:5000])
    cases = [
        (tmp_path / "missing.gguf", "model file not found"),
        (not_gguf, "not a GGUF file"),
        (truncated, "truncated"),
        (tmp_path, "is a folder"),
    ]
    for path, message in cases:
        for command in ("run", "info"):
            args = [command, "hi", "--model", str(path)] if command == "run" else [command, "--model", str(path)]
            result = invoke(*args)
            assert result.exit_code == 1, (command, path)
            assert message in result.stderr, (command, result.stderr)
            assert "Traceback" not in result.output
            assert len(result.stderr.strip().splitlines()) <= 2  # rich may wrap a long path


def test_info_describes_the_default_model():
    result = invoke("info")
    assert result.exit_code == 0, result.output
    for text in ("llama", "Q4_1", "8,192", "49,152", "smollm", "<|im_start|>", "134.5 M"):
        assert text in result.stdout, text


def test_info_json(tiny_path):
    import json

    result = invoke("info", "--model", str(tiny_path), "--json")
    data = json.loads(result.stdout)
    assert data["n_kv_heads"] == 1 and data["context_length"] == 64
    assert data["rope_scaling"] == "llama3 (rope_freqs)" and data["tied_embeddings"] is False


def test_chat_keeps_history_and_commands():
    script = (
        "\n".join(
            [
                "/params temperature=0 max_tokens=30",
                "What is the capital of France? Answer in one sentence.",
                "/system You are a pirate.",
                "/params top_k=-5",
                "/reset",
                "/exit",
            ]
        )
        + "\n"
    )
    result = invoke("chat", input=script)
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout
    assert "temperature=0" in result.stdout
    assert "system prompt set" in result.stdout and "conversation reset" in result.stdout
    assert "invalid parameter 'top_k'" in result.stdout  # a bad /params value is reported, chat goes on


def test_chat_drops_oldest_turns_when_context_is_full(tiny_path):
    lines = ["/params temperature=0 max_tokens=8"] + [f"message number {i}" for i in range(6)]
    result = invoke("chat", "--model", str(tiny_path), "--system", "sys", input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    assert "dropped the" in result.stderr


def test_help_explains_units_and_defaults():
    result = invoke("run", "--help")
    assert result.exit_code == 0
    for text in ("--temperature", "greedy", "--repeat-penalty", "--stop", "--raw", "default"):
        assert text in result.stdout


def test_package_import_is_light():
    # `import llamita` must not import torch (the CLI's --help stays fast).
    code = "import sys, llamita; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_run_structured_output_flags(tiny_path, tmp_path):
    """--grammar-file, --json-schema (file or inline) and --json constrain what is printed,
    even from a random model; two at once is a one-line error."""
    common = ["--model", str(tiny_path), "--raw", "--dtype", "float32", "--temperature", "1.0", "--seed", "1"]
    grammar = tmp_path / "yn.gbnf"
    grammar.write_text('root ::= ("yes" | "no")\n')
    r = invoke("run", "Answer:", *common, "--grammar-file", str(grammar))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() in ("yes", "no")
    schema = tmp_path / "s.json"
    schema.write_text(
        '{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": false}'
    )
    for given in (str(schema), schema.read_text()):
        r = invoke("run", "Answer:", *common, "--json-schema", given, "--max-tokens", "30")
        assert r.exit_code == 0, r.output
        text = r.stdout.strip()
        assert text.startswith('{"n":')
        if text.endswith("}"):
            value = json.loads(text)
            assert set(value) == {"n"} and isinstance(value["n"], int)
    r = invoke("run", "Answer:", *common, "--json", "--json-schema", str(schema))
    assert r.exit_code == 1 and "only one of" in r.output
