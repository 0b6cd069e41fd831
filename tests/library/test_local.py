"""The local library: Ollama's store and the HF cache listed and run in place; list, show,
rm and cp from the command line; names accepted wherever a model is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamita import LLM
from llamita.cli.main import app
from llamita.engine.loader import load_model, resolve_model_path
from llamita.errors import ModelFileError
from llamita.library.pull import pull
from llamita.sampling_params import SamplingParams

from ollama_store import write_ollama_model

GREEDY = SamplingParams(temperature=0, max_tokens=6)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def listed() -> dict[str, dict]:
    result = invoke("list", "--json")
    assert result.exit_code == 0, result.output
    return {m["name"]: m for m in json.loads(result.stdout)}


@pytest.fixture
def ollama_tiny(homes, models):
    return write_ollama_model(
        homes / "ollama",
        "tiny",
        "latest",
        models["q4"],
        template="{{ .Prompt }}",
        params={"temperature": 0.3, "stop": ["<|im_end|>"]},
        license_text="OLLAMA TINY LICENSE",
    )


def test_an_ollama_model_is_listed_and_runs_without_a_copy(ollama_tiny, models, homes):
    entry = listed()["tiny:latest"]
    assert entry["source"] == "ollama" and entry["size_bytes"] == models["q4"].stat().st_size
    assert entry["path"].startswith(str(homes / "ollama" / "blobs"))
    expected = LLM(models["q4"], dtype="float32", device="cpu").generate("the cat", GREEDY).token_ids
    for name in ("tiny:latest", "tiny"):  # a bare name means :latest, as in Ollama
        assert LLM(name, dtype="float32", device="cpu").generate("the cat", GREEDY).token_ids == expected
    result = invoke("run", "tiny", "the cat", "--raw", "-n", "3", "--temperature", "0")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("tiny ·") and "sha256-" not in result.stderr
    shown = json.loads(invoke("show", "tiny", "--json").stdout)
    assert shown["template"] == "{{ .Prompt }}" and shown["license"] == "OLLAMA TINY LICENSE"
    assert shown["generation_parameters"]["temperature"] == 0.3
    assert "Ollama's store" in invoke("rm", "tiny").output and listed()["tiny:latest"]
    assert invoke("cp", "tiny", "mytiny").exit_code == 0
    assert {"tiny:latest", "mytiny"} <= set(listed())  # an alias never hides Ollama's tag
    assert invoke("rm", "mytiny").exit_code == 0 and (homes / "ollama" / "blobs").exists()
    assert Path(listed()["tiny:latest"]["path"]).is_file()


def test_the_hf_cache_is_listed_and_runs_in_place(hub, models):
    pulled = pull("test/tiny-GGUF:Q8_0")
    from llamita.library.store import delete_manifest

    delete_manifest(pulled.name)  # as if another tool had put it in the cache
    entry = listed()["hf.co/test/tiny-GGUF:Q8_0"]
    assert entry["source"] == "huggingface" and entry["parameters"] > 0
    assert load_model("test/tiny-GGUF", dtype="float32").path == pulled.path


def test_list_show_cp_rm(hub, models):
    pull("test/tiny-GGUF")
    rows = listed()
    assert set(rows) == {"hf.co/test/tiny-GGUF:Q4_K_M", "smollm2:135m"}
    row = rows["hf.co/test/tiny-GGUF:Q4_K_M"]
    assert row["quantization"] == "Q4_K_M" and row["source"] == "llamita" and row["parameters"] > 0
    table = CliRunner().invoke(app, ["list"], env={"COLUMNS": "160"}).stdout
    assert "hf.co/test/tiny-GGUF:Q4_K_M" in table and "QUANT" in table

    shown = invoke("show", "test/tiny-GGUF", "--json")
    data = json.loads(shown.stdout)
    assert data["architecture"] == "llama" and "im_start" in data["template"]
    assert data["metadata"]["llama.block_count"] == 2

    hub_cache = resolve_model_path("test/tiny-GGUF").parent.parent.parent / "blobs"
    before = sum(p.stat().st_size for p in hub_cache.iterdir())
    assert invoke("cp", "test/tiny-GGUF", "mine:v1").exit_code == 0
    assert sum(p.stat().st_size for p in hub_cache.iterdir()) == before  # a reference, not a copy
    assert resolve_model_path("mine:v1") == resolve_model_path("hf.co/test/tiny-GGUF:Q4_K_M")
    assert "already exists" in invoke("cp", "test/tiny-GGUF", "mine:v1").output

    # Removing the original keeps the files the copy still uses; removing the copy frees them.
    assert invoke("rm", "hf.co/test/tiny-GGUF:Q4_K_M").exit_code == 0
    assert set(listed()) == {"mine:v1", "smollm2:135m"}
    LLM("mine:v1", dtype="float32", device="cpu")
    result = invoke("rm", "mine:v1")
    assert result.exit_code == 0 and "freed" in result.output
    assert set(listed()) == {"smollm2:135m"} and not any(hub_cache.iterdir())


def test_cp_of_a_path_and_names_in_every_command(models):
    assert invoke("cp", str(models["q8"]), "tiny8").exit_code == 0
    assert resolve_model_path("tiny8") == models["q8"].resolve()
    info = invoke("info", "--model", "tiny8", "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["path"] == str(models["q8"].resolve())
    assert invoke("rm", "tiny8").exit_code == 0 and models["q8"].exists()  # never the user's file


def test_names_that_are_not_local(hub):
    with pytest.raises(ModelFileError, match="not on this machine: `llamita pull test/tiny-GGUF`"):
        resolve_model_path("test/tiny-GGUF")
    with pytest.raises(ModelFileError, match="'nope:1b' not found: .*known name"):
        load_model("nope:1b")
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model("missing.gguf")
    assert "not in the library" in invoke("rm", "nope").output
    assert not hub.served  # none of that touched the network


def test_memory_of_a_short_name_before_pulling_it():
    result = invoke("memory", "llama3.1:405b", "--json", "--ctx", "8192")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"] == "llama-3.1-405b" and report["estimates"][0]["type"] == "Q4_K_M"
    assert report["estimates"][0]["total"] > 200e9


def test_chat_takes_the_model_as_its_argument(ollama_tiny):
    result = CliRunner().invoke(app, ["chat", "tiny", "-n", "3", "--temperature", "0"], input="hello\n/exit\n")
    assert result.exit_code == 0, result.output
    # Opened in place from Ollama's store, and called by the tag it was asked by, not by its
    # blob's sha256-... file name.
    assert "tiny ·" in result.stderr and "sha256-" not in result.output


def test_a_server_started_by_name_answers_to_that_name(models, ollama_tiny):
    from llamita.serving.server import served_name

    assert served_name(resolve_model_path("tiny"), "tiny") == "tiny"
    assert served_name(models["q8"], str(models["q8"])) == "tiny-Q8_0"


def test_rm_of_a_pulled_split_or_folder_frees_every_file(hub):
    from llamita.library.store import hf_cache_dir

    for name in ("hf.co/test/split-GGUF:Q4_K_M", "test/tiny-hf"):
        pull(name)
    blobs = [p for p in hf_cache_dir().rglob("blobs/*") if p.is_file()]
    assert len(blobs) >= 3 + 4
    result = CliRunner().invoke(app, ["rm", "hf.co/test/split-GGUF:Q4_K_M", "hf.co/test/tiny-hf"])
    assert result.exit_code == 0, result.output
    assert not [p for p in hf_cache_dir().rglob("blobs/*") if p.is_file()]
    assert set(listed()) == {"smollm2:135m"}
