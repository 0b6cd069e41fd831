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
    return write_gguf(
        tmp_path_factory.mktemp("gguf") / "tiny.gguf", cfg, random_hf_weights(cfg), gguf.GGMLQuantizationType.Q8_0
    )


def _same_as_reference(path: Path, skip: frozenset[str] = frozenset()) -> None:
    ref = gguf.GGUFReader(str(path))
    ours = GGUFFile(path)
    keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(ours.metadata) == keys
    for k in set(keys) - skip:
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
    p.write_bytes(data[: max(int(len(data) * keep), 30)])
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
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match="architecture 'gemma'"):
        open_gguf(tmp_path / "g.gguf")


def test_every_metadata_value_type(tmp_path):
    """u8 … f64, bool, string and (nested) arrays read exactly as the gguf package reads them."""
    p = tmp_path / "types.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    T = gguf.GGUFValueType
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "¿Qué tal? 🦙")
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 0.1)
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_str", ["a", "ñ", ""])
    w.add_array("t.arr_bool", [True, False])
    w.add_array("t.arr_f32", [0.5, -1.25])
    w.add_key_value("t.nested", [[1, 2], [3]], T.ARRAY)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = GGUFFile(p).metadata
    assert ours["t.u8"] == 200 and ours["t.i8"] == -100 and ours["t.u16"] == 60000
    assert ours["t.i16"] == -30000 and ours["t.u32"] == 4_000_000_000 and ours["t.i32"] == -2_000_000_000
    assert np.float32(ours["t.f32"]) == np.float32(0.1) and ours["t.f64"] == 0.1
    assert ours["t.bool"] is True and ours["t.str"] == "¿Qué tal? 🦙"
    assert ours["t.u64"] == 2**63 + 5 and ours["t.i64"] == -(2**62)
    assert ours["t.arr_i32"] == [1, -2, 3] and ours["t.arr_str"] == ["a", "ñ", ""]
    assert ours["t.arr_bool"] == [True, False] and ours["t.arr_f32"] == [0.5, -1.25]
    assert ours["t.nested"] == [[1, 2], [3]]
    _same_as_reference(p, skip=frozenset({"t.nested"}))  # gguf's contents() flattens nested arrays


def test_unsupported_tensor_type_is_named(tmp_path):
    from llamita.engine.loader import load_model

    from tiny_models import write_gguf as write

    cfg = tiny_hf_config()
    p = write(tmp_path / "q4.gguf", cfg, random_hf_weights(cfg), gguf.GGMLQuantizationType.Q4_0)
    data = bytearray(p.read_bytes())
    # Relabel one Q4_0 tensor as IQ4_NL: same 32-weight/18-byte blocks, so the file stays
    # consistent and only the loader can refuse it, by name.
    name = b"blk.0.attn_q.weight"
    at = bytes(data).index(name) + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    type_at = at + 4 + 8 * n_dims
    assert struct.unpack_from("<I", data, type_at)[0] == 2
    struct.pack_into("<I", data, type_at, 20)
    bad = tmp_path / "iq4.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(UnsupportedModelError, match="blk.0.attn_q.weight.*IQ4_NL"):
        load_model(bad, dtype="float32", device="cpu")
