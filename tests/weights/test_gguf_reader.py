"""Our GGUF reader against the `gguf` package's reader, and its errors on damaged files."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from llamita.errors import ModelFileError, UnsupportedModelError
from llamita.weights.gguf import config_from_gguf, open_gguf
from llamita.weights.gguf_reader import GGUFFile
from tiny_models import random_hf_weights, tiny_hf_config, write_gguf


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    cfg = tiny_hf_config()
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", cfg, random_hf_weights(cfg),
                      gguf.GGMLQuantizationType.Q8_0)


def _same_as_reference(path: Path) -> None:
    ref = gguf.GGUFReader(str(path))
    ours = GGUFFile(path)
    keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(ours.metadata) == keys
    for k in keys:
        want = ref.fields[k].contents()
        got = ours.metadata[k]
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=0, abs=0) or np.float32(got) == np.float32(want)
        else:
            assert got == want, k
    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert info.ggml_type == int(t.tensor_type)
        assert info.shape == tuple(int(d) for d in reversed(t.shape))
        assert info.offset == t.data_offset and info.nbytes == t.n_bytes
        assert np.array_equal(ours.tensor_bytes(t.name), np.asarray(t.data).reshape(-1).view(np.uint8))
    assert ours.alignment == ref.alignment and ours.data_offset == ref.data_offset


def test_default_model_same_as_gguf_package(default_model_path):
    _same_as_reference(default_model_path)


def test_tiny_model_same_as_gguf_package(tiny_file):
    _same_as_reference(tiny_file)


def test_default_model_config(default_model_path):
    g, cfg = open_gguf(default_model_path)
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim) == (30, 576, 9, 3, 64, 1536)
    assert (cfg.vocab_size, cfg.context_length, cfg.rope_theta) == (49152, 8192, 100000.0)
    assert cfg.tie_word_embeddings
    assert g.metadata["tokenizer.ggml.pre"] == "smollm"


def test_version_2_is_read(tiny_file, tmp_path):
    data = bytearray(tiny_file.read_bytes())
    data[4:8] = struct.pack("<I", 2)
    v2 = tmp_path / "v2.gguf"
    v2.write_bytes(bytes(data))
    assert GGUFFile(v2).version == 2
    assert config_from_gguf(GGUFFile(v2)) == config_from_gguf(GGUFFile(tiny_file))


def test_missing_file():
    with pytest.raises(ModelFileError, match="not found"):
        GGUFFile("/nonexistent/model.gguf")


def test_not_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        GGUFFile(p)


@pytest.mark.parametrize("keep", [0.999, 0.6, 0.1, 0.01, 30 / 1e6])
def test_truncated(tiny_file, tmp_path, keep):
    data = tiny_file.read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[:max(int(len(data) * keep), 30)])
    with pytest.raises(ModelFileError, match="truncated|corrupt|not a GGUF"):
        GGUFFile(p)


def test_huge_declared_counts(tmp_path):
    p = tmp_path / "huge.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 2**40) + b"\0" * 64)
    with pytest.raises(ModelFileError, match="more than the file can hold"):
        GGUFFile(p)


def test_huge_string_length(tmp_path):
    p = tmp_path / "str.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62) + b"\0" * 64)
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        GGUFFile(p)


def test_unsupported_version(tiny_file, tmp_path):
    data = bytearray(tiny_file.read_bytes())
    data[4:8] = struct.pack("<I", 1)
    p = tmp_path / "v1.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(UnsupportedModelError, match="version 1"):
        GGUFFile(p)


def test_unsupported_architecture(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gemma")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(UnsupportedModelError, match="architecture 'gemma'"):
        open_gguf(tmp_path / "g.gguf")
