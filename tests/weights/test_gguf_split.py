"""Split GGUF models (llama.cpp's gguf-split: NAME-0000K-of-0000N.gguf) load as one model."""

from __future__ import annotations

import pytest
import torch

from llamita.engine.loader import load_model
from llamita.errors import ModelFileError
from llamita.weights.gguf_reader import GGUFFile

from tiny_models import random_hf_weights, tiny_hf_config, write_gguf


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    cfg = tiny_hf_config()
    sd = random_hf_weights(cfg)
    whole = write_gguf(folder / "whole.gguf", cfg, sd)
    first = write_gguf(folder / "parts.gguf", cfg, sd, split_max_tensors=8)
    return whole, first


def test_parts_join_into_one_file(files):
    whole, first = files
    assert first.name == "parts-00001-of-00003.gguf"
    with GGUFFile(whole) as one, GGUFFile(first) as split:
        assert split.tensors.keys() == one.tensors.keys()
        assert split.metadata["general.architecture"] == "llama"
        for name in one.tensors:
            assert bytes(split.tensor_bytes(name)) == bytes(one.tensor_bytes(name)), name


def test_split_model_answers_as_the_whole(files):
    whole, first = files
    ids = torch.tensor([[5, 40, 77, 3]])
    logits = [load_model(p, dtype="float32", device="cpu").model(ids) for p in files]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)


def test_a_later_part_or_a_missing_part_is_named(files, tmp_path):
    _, first = files
    second = first.with_name("parts-00002-of-00003.gguf")
    with pytest.raises(ModelFileError, match="open the first part, parts-00001-of-00003.gguf"):
        GGUFFile(second)
    for part in first.parent.glob("parts-*.gguf"):
        (tmp_path / part.name).write_bytes(part.read_bytes())
    (tmp_path / "parts-00003-of-00003.gguf").unlink()
    with pytest.raises(ModelFileError, match="part 3 of 3 is missing"):
        GGUFFile(tmp_path / first.name)
