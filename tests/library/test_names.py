"""Names: which form a string is, the quantization a file name states, which files a tag picks."""

from __future__ import annotations

import pytest

from llamita.errors import ModelFileError
from llamita.library.catalog import SHORT_NAMES, catalog_entry
from llamita.library.files import choose_gguf, gguf_models, quant_label, safetensors_model
from llamita.library.names import parse_name


@pytest.mark.parametrize(
    "text, kind, repo, quant, canonical",
    [
        (
            "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:q4_k_m",
            "hf",
            "bartowski/Llama-3.2-1B-Instruct-GGUF",
            "q4_k_m",
            "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        ),
        ("huggingface.co/user/repo", "hf", "user/repo", None, "hf.co/user/repo"),
        ("user/repo:Q8_0", "hf", "user/repo", "Q8_0", "hf.co/user/repo:Q8_0"),
        ("llama3.2:1b", "short", None, None, "llama3.2:1b"),
        ("Llama3.1:8B", "short", None, None, "llama3.1:8b"),
        ("my-model", "short", None, None, "my-model"),
        ("./model.gguf", "path", None, None, "./model.gguf"),
        ("/models/x", "path", None, None, "/models/x"),
        ("~/x.gguf", "path", None, None, "~/x.gguf"),
        ("models/foo.gguf", "path", None, None, "models/foo.gguf"),
    ],
)
def test_name_forms(text, kind, repo, quant, canonical):
    name = parse_name(text)
    assert (name.kind, name.repo, name.quant, name.canonical) == (kind, repo, quant, canonical)


def test_an_existing_folder_is_a_path_even_if_it_looks_like_a_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user" / "repo").mkdir(parents=True)
    assert parse_name("user/repo").kind == "path"


@pytest.mark.parametrize(
    "filename, label",
    [
        ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("llama-3.2-1b-instruct-q8_0.gguf", "Q8_0"),
        ("Meta-Llama-3.1-405B-Instruct-Q4_K_M-00001-of-00006.gguf", "Q4_K_M"),
        ("sub/model.IQ3_XXS.gguf", "IQ3_XXS"),
        ("model-f16.gguf", "F16"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("model.gguf", None),
    ],
)
def test_quant_labels(filename, label):
    assert quant_label(filename) == label


def test_split_parts_group_and_incomplete_splits_are_left_out():
    names = [
        "a/m-Q4_K_M-00002-of-00002.gguf",
        "a/m-Q4_K_M-00001-of-00002.gguf",
        "m-Q8_0-00001-of-00003.gguf",
        "m-Q8_0-00002-of-00003.gguf",
        "mmproj-f16.gguf",
        "README.md",
    ]
    models = gguf_models(names)
    assert [m.files for m in models] == [("a/m-Q4_K_M-00001-of-00002.gguf", "a/m-Q4_K_M-00002-of-00002.gguf")]
    assert choose_gguf(models, "q4_k_m", "x").quant == "Q4_K_M"


def test_choosing_a_file():
    models = gguf_models(["m-Q8_0.gguf", "m-Q4_K_M.gguf", "m-Q4_K_S.gguf"])
    assert choose_gguf(models, None, "x").primary == "m-Q4_K_M.gguf"
    assert choose_gguf(models, "q4_k_s", "x").primary == "m-Q4_K_S.gguf"
    assert choose_gguf(gguf_models(["only-Q6_K.gguf"]), None, "x").primary == "only-Q6_K.gguf"
    with pytest.raises(ModelFileError, match="pick one with :QUANT, one of Q4_K_S, Q8_0"):
        choose_gguf(gguf_models(["m-Q8_0.gguf", "m-Q4_K_S.gguf"]), None, "x")
    with pytest.raises(ModelFileError, match="x has no Q2_K file; it has: Q4_K_M, Q4_K_S, Q8_0"):
        choose_gguf(models, "Q2_K", "x")


def test_a_safetensors_folder_takes_only_what_it_needs():
    names = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "original/consolidated.00.pth",
        "pytorch_model.bin",
        "README.md",
        "LICENSE",
    ]
    folder = safetensors_model(names)
    assert folder is not None and folder.primary == "config.json"
    assert set(folder.files) == {
        "config.json",
        "model-00001-of-00002.safetensors",
        "LICENSE",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert safetensors_model(["config.json", "pytorch_model.bin"]) is None


def test_the_short_name_table():
    assert set(SHORT_NAMES) == {
        "llama3.2:1b",
        "llama3.2:3b",
        "llama3.1:8b",
        "llama3.1:70b",
        "llama3.1:405b",
        "smollm2:135m",
    }
    assert catalog_entry("LLAMA3.2:1B").repo == "bartowski/Llama-3.2-1B-Instruct-GGUF"
    assert catalog_entry("llama3.1").name == "llama3.1:8b"  # Ollama's default size
    assert catalog_entry("smollm2:135m").repo is None  # the embedded model
    for entry in SHORT_NAMES.values():
        assert quant_label(entry.file) == entry.quant
