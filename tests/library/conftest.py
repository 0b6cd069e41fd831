"""Fixtures: every library test gets its own empty library, Hugging Face cache and Ollama
store (in tmp_path), and the pull tests a hub on loopback serving repositories built here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest

from fake_hub import FakeHub
from tiny_models import hf_llama, llama31_mini_config, random_hf_weights, tiny_hf_config, write_gguf, write_hf_folder


@pytest.fixture(autouse=True)
def homes(tmp_path, monkeypatch) -> Path:
    """Point LLAMITA_HOME, HF_HOME and OLLAMA_MODELS into tmp_path; no token, no mirror."""
    for var in ("HF_TOKEN", "HF_HUB_CACHE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LLAMITA_HOME", str(tmp_path / "llamita"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    return tmp_path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """The files the hub serves: two tiny llama GGUFs, a 3-part split one, a non-llama GGUF and
    a safetensors folder (Llama 3.1 shape in miniature, bfloat16)."""
    folder = tmp_path_factory.mktemp("hub-files")
    cfg = tiny_hf_config()
    found = {
        "q4": write_gguf(folder / "tiny-Q4_K_M.gguf", cfg, random_hf_weights(cfg, seed=0)),
        "q8": write_gguf(folder / "tiny-Q8_0.gguf", cfg, random_hf_weights(cfg, seed=1)),
        "split": write_gguf(folder / "big-Q4_K_M.gguf", cfg, random_hf_weights(cfg, seed=2), split_max_tensors=8),
    }
    w = gguf.GGUFWriter(str(folder / "qwen-Q4_K_M.gguf"), "qwen2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    found["qwen"] = folder / "qwen-Q4_K_M.gguf"
    mini = llama31_mini_config(tied=True)
    import torch

    found["hf"] = write_hf_folder(folder / "hf", mini, hf_llama(mini, random_hf_weights(mini)), dtype=torch.bfloat16)
    return found


@pytest.fixture
def hub(models, monkeypatch) -> Iterator[FakeHub]:
    """The hub, with HF_ENDPOINT pointing at it. Repositories:
    test/tiny-GGUF (Q4_K_M + Q8_0), test/two-GGUF (Q8_0 + F16: no default), test/split-GGUF,
    test/qwen-GGUF (not llama), test/tiny-hf (safetensors + files a pull must skip),
    test/gated-GGUF (token "hf_secret"), test/bad-GGUF (a wrong SHA-256)."""
    split_parts = sorted(models["split"].parent.glob("big-Q4_K_M-*.gguf"))
    with FakeHub() as h:
        h.add(
            "test/tiny-GGUF",
            {"tiny-Q4_K_M.gguf": models["q4"], "tiny-Q8_0.gguf": models["q8"], "README.md": b"# tiny\n"},
        )
        h.add("test/two-GGUF", {"two-Q8_0.gguf": models["q8"], "two-F16.gguf": models["q4"]})
        h.add("test/split-GGUF", {f"Q4_K_M/{p.name}": p for p in split_parts})
        h.add("test/qwen-GGUF", {"qwen-Q4_K_M.gguf": models["qwen"]})
        hf_files: dict[str, bytes | Path] = {p.name: p for p in models["hf"].iterdir()}
        hf_files.update(
            {
                "original/consolidated.00.pth": b"x" * 1000,
                "README.md": b"# hf\n",
                "LICENSE": b"TINY LICENSE\nuse it kindly\n",
            }
        )
        h.add("test/tiny-hf", hf_files)
        h.add("test/gated-GGUF", {"gated-Q4_K_M.gguf": models["q4"]}, token="hf_secret")
        h.add("test/bad-GGUF", {"bad-Q4_K_M.gguf": models["q4"]}, wrong_sha={"bad-Q4_K_M.gguf"})
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        yield h
