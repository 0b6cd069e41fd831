"""`llamita quantize`: tensor types follow llama.cpp's mixes; bytes match the gguf package."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from llamita.errors import InvalidParameterError, UnsupportedModelError
from llamita.weights.gguf_reader import GGUFFile
from llamita.weights.gguf_writer import GGUFSource, plan, write_quantized
from llamita.weights.quant_mix import FILE_TYPES, file_type, use_more_bits
from llamita.weights.quants import GGMLType
from tests.tiny_models import random_hf_weights, tiny_hf_config, write_gguf

LEGACY = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory) -> Path:
    cfg = tiny_hf_config()
    return write_gguf(tmp_path_factory.mktemp("q") / "tiny-f32.gguf", cfg, random_hf_weights(cfg))


def _reference_values(path: Path) -> dict[str, np.ndarray]:
    r = gguf.GGUFReader(path)
    return {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(n) for n in t.shape])))
        for t in r.tensors
    }


class FakeSource:
    """Tensor names and shapes of a real model, no data: enough to plan a mix."""

    def __init__(
        self, n_layers: int, dim: int, ffn: int, n_heads: int, n_kv: int, vocab: int, tied: bool = False
    ) -> None:
        self.path = Path("fake.gguf")
        self.architecture = "llama"
        self.file_size = 0
        self._meta = {
            "llama.block_count": n_layers,
            "llama.attention.head_count": n_heads,
            "llama.attention.head_count_kv": n_kv,
        }
        hd = dim // n_heads
        infos = [("token_embd.weight", (vocab, dim), GGMLType.BF16)]
        for i in range(n_layers):
            p = f"blk.{i}."
            infos += [
                (p + "attn_norm.weight", (dim,), GGMLType.F32),
                (p + "attn_q.weight", (dim, dim), GGMLType.BF16),
                (p + "attn_k.weight", (n_kv * hd, dim), GGMLType.BF16),
                (p + "attn_v.weight", (n_kv * hd, dim), GGMLType.BF16),
                (p + "attn_output.weight", (dim, dim), GGMLType.BF16),
                (p + "ffn_norm.weight", (dim,), GGMLType.F32),
                (p + "ffn_gate.weight", (ffn, dim), GGMLType.BF16),
                (p + "ffn_up.weight", (ffn, dim), GGMLType.BF16),
                (p + "ffn_down.weight", (dim, ffn), GGMLType.BF16),
            ]
        infos.append(("output_norm.weight", (dim,), GGMLType.F32))
        if not tied:
            infos.append(("output.weight", (vocab, dim), GGMLType.BF16))
        infos.append(("rope_freqs.weight", (hd // 2,), GGMLType.F32))
        self._infos = infos

    def metadata_items(self):
        for k, v in self._meta.items():
            yield k, v, 4, None

    def tensor_infos(self):
        return self._infos


def _types(plans) -> dict[str, str]:
    return {p.name: p.target_type.name for p in plans}


def test_use_more_bits_layers_for_32_layers():
    # docs/llama-reference.md §6.3: layers 0-3, 6, 9, ..., 27, 28-31 (16 of 32).
    expected = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(32) if use_more_bits(i, 32)] == expected


def test_q4_k_m_mix_for_llama_3_1_8b_shape():
    t = _types(plan(FakeSource(32, 4096, 14336, 32, 8, 128256), file_type("Q4_K_M")))
    more = {i for i in range(32) if use_more_bits(i, 32)}
    assert t["token_embd.weight"] == "Q4_K" and t["output.weight"] == "Q6_K"
    for i in range(32):
        p = f"blk.{i}."
        for name in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert t[p + name + ".weight"] == "Q4_K"
        want = "Q6_K" if i in more else "Q4_K"
        assert t[p + "attn_v.weight"] == want and t[p + "ffn_down.weight"] == want
        assert t[p + "attn_norm.weight"] == "F32" and t[p + "ffn_norm.weight"] == "F32"
    assert t["rope_freqs.weight"] == "F32"


def test_q3_k_m_q2_k_and_q5_k_m_mixes():
    src = FakeSource(32, 4096, 14336, 32, 8, 128256)
    q3 = _types(plan(src, file_type("Q3_K_M")))
    assert [q3[f"blk.{i}.attn_v.weight"] for i in (0, 1, 2)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert [q3[f"blk.{i}.ffn_down.weight"] for i in (0, 1, 2)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert q3["blk.5.attn_output.weight"] == "Q4_K" and q3["blk.5.attn_q.weight"] == "Q3_K"
    q2 = _types(plan(src, file_type("Q2_K")))
    assert q2["blk.0.attn_v.weight"] == "Q4_K"  # 4 query heads per KV head
    assert q2["blk.0.ffn_down.weight"] == "Q3_K" and q2["blk.0.attn_output.weight"] == "Q3_K"
    assert q2["blk.0.ffn_up.weight"] == "Q2_K" and q2["output.weight"] == "Q6_K"
    q5 = _types(plan(src, file_type("Q5_K_M")))
    assert q5["blk.0.attn_v.weight"] == "Q6_K" and q5["blk.4.attn_v.weight"] == "Q5_K"


def test_70b_gives_v_more_bits_and_tied_embeddings_are_the_output():
    t = _types(plan(FakeSource(80, 8192, 28672, 64, 8, 128256), file_type("Q4_K_M")))
    assert t["blk.11.attn_v.weight"] == "Q5_K" and t["blk.12.attn_v.weight"] == "Q6_K"
    tied = _types(plan(FakeSource(16, 2048, 8192, 32, 8, 128256, tied=True), file_type("Q4_K_M")))
    assert tied["token_embd.weight"] == "Q6_K"


def test_rows_not_multiple_of_256_fall_back_like_llama_cpp():
    # SmolLM2-135M: dim 576 = 2.25 x 256, so K-quants fall back to 32-weight blocks.
    src = FakeSource(30, 576, 1536, 9, 3, 49152, tied=True)
    t = _types(plan(src, file_type("Q4_K_M")))
    assert t["token_embd.weight"] == "Q8_0"
    assert t["blk.5.attn_q.weight"] == "Q5_0" and t["blk.4.ffn_down.weight"] == "Q4_K"
    assert _types(plan(src, file_type("Q2_K")))["blk.5.ffn_up.weight"] == "Q4_0"
    assert _types(plan(src, file_type("Q5_K_M")))["blk.5.attn_q.weight"] == "Q5_1"


def test_unknown_type_lists_the_choices():
    with pytest.raises(InvalidParameterError, match="Q4_K_M"):
        file_type("Q7_Z")
    assert file_type("q4_k_m").name == "Q4_K_M"


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_output_is_byte_identical_to_gguf_package(tiny_f32, tmp_path, name):
    out = tmp_path / f"tiny-{name}.gguf"
    report = write_quantized(GGUFSource(GGUFFile(tiny_f32)), out, file_type(name))
    src = gguf.GGUFReader(tiny_f32)
    dst = gguf.GGUFReader(out)
    src_values = _reference_values(tiny_f32)
    planned = {p.name: p.target_type for p in report.tensors}
    dst_tensors = {t.name: t for t in dst.tensors}
    assert set(dst_tensors) == {t.name for t in src.tensors}
    for t in src.tensors:
        got = dst_tensors[t.name]
        assert int(got.tensor_type) == int(planned[t.name])
        assert [int(n) for n in got.shape] == [int(n) for n in t.shape]
        want_type = gguf.GGMLQuantizationType(int(planned[t.name]))
        if want_type == gguf.GGMLQuantizationType.F32:
            want = src_values[t.name].astype(np.float32).tobytes()
        else:
            want = gguf.quants.quantize(src_values[t.name], want_type).tobytes()
        assert got.data.tobytes() == want, t.name
    # Metadata is carried over unchanged, file_type says what the file now is.
    for key, field in src.fields.items():
        if key.startswith("GGUF.") or key in ("general.file_type",):
            continue
        assert key in dst.fields, key
        assert dst.fields[key].contents() == field.contents(), key
    assert dst.fields["general.file_type"].contents() == FILE_TYPES[name].file_type


def test_quantized_model_runs_close_to_source(tiny_f32, tmp_path):
    from llamita.engine.loader import load_model

    out = tmp_path / "tiny-q8.gguf"
    write_quantized(GGUFSource(GGUFFile(tiny_f32)), out, file_type("Q8_0"))
    tokens = torch.tensor([[5, 17, 42, 99, 3, 64]])
    logits = []
    for path in (tiny_f32, out):
        model = load_model(path, dtype="float32").model
        with torch.inference_mode():
            logits.append(model(tokens, torch.arange(tokens.shape[1])[None])[0])
    err = (logits[0] - logits[1]).abs().max() / logits[0].abs().max()
    assert 0 < err < 0.05


def test_requantizing_needs_permission_and_leaves_no_file(tiny_f32, tmp_path):
    q4 = tmp_path / "q4.gguf"
    write_quantized(GGUFSource(GGUFFile(tiny_f32)), q4, file_type("Q4_0"))
    out = tmp_path / "again.gguf"
    with pytest.raises(InvalidParameterError, match="allow-requantize"):
        write_quantized(GGUFSource(GGUFFile(q4)), out, file_type("Q8_0"))
    assert not out.exists() and not list(tmp_path.glob(".*partial"))
    report = write_quantized(GGUFSource(GGUFFile(q4)), out, file_type("Q8_0"), allow_requantize=True)
    assert report.requantized and out.exists()
    # Same type in and out is a copy, not a re-encoding: allowed without the flag.
    same = tmp_path / "same.gguf"
    write_quantized(GGUFSource(GGUFFile(q4)), same, file_type("Q4_0"))
    a, b = gguf.GGUFReader(q4), gguf.GGUFReader(same)
    assert all(x.data.tobytes() == y.data.tobytes() for x, y in zip(a.tensors, b.tensors))


def test_output_must_differ_from_input(tiny_f32):
    with pytest.raises(InvalidParameterError, match="differ"):
        write_quantized(GGUFSource(GGUFFile(tiny_f32)), tiny_f32, file_type("F16"))


def test_failure_midway_leaves_no_partial_file(tiny_f32, tmp_path, monkeypatch):
    import llamita.weights.gguf_writer as gw

    def boom(*a, **k):
        raise UnsupportedModelError("simulated failure")

    monkeypatch.setattr(gw, "quantize", boom)
    out = tmp_path / "never.gguf"
    with pytest.raises(UnsupportedModelError):
        write_quantized(GGUFSource(GGUFFile(tiny_f32)), out, file_type("Q8_0"))
    assert not out.exists() and not list(tmp_path.glob(".*partial"))
