"""Fuzzing the GGUF reader and the loader behind it (hypothesis).

Model files come from strangers, so every malformed file must end in one of our typed errors
(`llamita.errors.LlamitaError`) or load cleanly: never another exception, a hang, or an
allocation of gigabytes before a size check. Files are built here byte by byte (an independent
little GGUF writer that can lie: counts, string lengths, types, dims, offsets), starting from a
valid tiny model, then damaged in a structured way (metadata values of the wrong type or size,
bad tensor infos) and at the byte level (truncation, header fields overwritten with extreme
values, random bytes).

The suite runs a bounded number of examples; `LLAMITA_FUZZ_EXAMPLES=20000` runs a long campaign
(see docs/reliability.md for the counts run so far).
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from llamita.errors import LlamitaError  # noqa: E402

from bounded import bounded  # noqa: E402
from tiny_models import CHATML, byte_vocab  # noqa: E402

EXAMPLES = int(os.environ.get("LLAMITA_FUZZ_EXAMPLES", "150"))
# Every example must finish in this long: a hang shows up as a failure, not a stuck suite.
SECONDS_PER_EXAMPLE = 10
# Memory the process may grow by while one example loads (the valid model needs ~1 MiB).
MEMORY_HEADROOM = 1 << 30

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {
    U8: "<B",
    I8: "<b",
    U16: "<H",
    I16: "<h",
    U32: "<I",
    I32: "<i",
    F32: "<f",
    BOOL: "<B",
    U64: "<Q",
    I64: "<q",
    F64: "<d",
}
F32_TYPE, F16_TYPE, Q8_0_TYPE = 0, 1, 8


# ------------------------------------------------------------------ an independent GGUF writer


@dataclass
class Tensor:
    name: str
    ne: list[int]  # GGML order (innermost first)
    ggml_type: int
    data: bytes = field(repr=False)
    offset: int | None = None  # None: packed in order at the alignment


@dataclass
class Model:
    """What a GGUF file says: metadata as (value type, value) and tensors."""

    metadata: list[tuple[str, int, Any]]
    tensors: list[Tensor]
    version: int = 3
    alignment: int = 32
    # Lies told in the header: declared counts that differ from what follows.
    n_kv: int | None = None
    n_tensors: int | None = None


@dataclass
class Written:
    data: bytearray
    # Offsets of every count, length, type and offset field of the header, with their width:
    # where a byte-level mutation hurts most.
    fields: list[tuple[int, int]] = field(default_factory=list)


def _value(out: Written, vtype: int, value: Any) -> None:
    if vtype == STRING:
        raw = value if isinstance(value, bytes) else value.encode()
        out.fields.append((len(out.data), 8))
        out.data += struct.pack("<Q", len(raw)) + raw
    elif vtype == ARRAY:
        etype, items = value
        out.fields.append((len(out.data), 4))
        out.data += struct.pack("<I", etype)
        out.fields.append((len(out.data), 8))
        out.data += struct.pack("<Q", len(items))
        for item in items:
            _value(out, etype, item)
    elif vtype in _FMT:
        out.data += struct.pack(_FMT[vtype], value)
    else:
        raise AssertionError(vtype)


def write(model: Model) -> Written:
    out = Written(bytearray(b"GGUF"))
    out.data += struct.pack("<I", model.version)
    out.fields.append((len(out.data), 8))
    out.data += struct.pack("<Q", len(model.tensors) if model.n_tensors is None else model.n_tensors)
    out.fields.append((len(out.data), 8))
    out.data += struct.pack("<Q", len(model.metadata) if model.n_kv is None else model.n_kv)
    for key, vtype, value in model.metadata:
        _value(out, STRING, key)
        out.fields.append((len(out.data), 4))
        out.data += struct.pack("<I", vtype)
        _value(out, vtype, value)
    offset = 0
    offsets = []
    for t in model.tensors:
        if t.offset is None:
            offset = -(-offset // model.alignment) * model.alignment
            offsets.append(offset)
            offset += len(t.data)
        else:
            offsets.append(t.offset)
    for t, off in zip(model.tensors, offsets):
        _value(out, STRING, t.name)
        out.fields.append((len(out.data), 4))
        out.data += struct.pack("<I", len(t.ne))
        for d in t.ne:
            out.fields.append((len(out.data), 8))
            out.data += struct.pack("<Q", d)
        out.fields.append((len(out.data), 4))
        out.data += struct.pack("<I", t.ggml_type)
        out.fields.append((len(out.data), 8))
        out.data += struct.pack("<Q", off)
    start = -(-len(out.data) // model.alignment) * model.alignment
    out.data += b"\0" * (start - len(out.data))
    for t, off in zip(model.tensors, offsets):
        if t.offset is None:
            out.data += b"\0" * (start + off - len(out.data)) + t.data
    return out


def _q8_0(rows: np.ndarray) -> bytes:
    """Q8_0 blocks (f16 scale + 32 int8) of a float matrix, row-major."""
    blocks = rows.reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127
    q = np.round(blocks / np.where(d == 0, 1, d)).astype(np.int8)
    return b"".join(s.astype("<f2").tobytes() + b.tobytes() for s, b in zip(d, q))


def valid_model(seed: int = 0) -> Model:
    """A complete little llama (1 layer, dim 32, GQA 2:1, byte vocab) that loads and runs."""
    rng = np.random.default_rng(seed)
    tokens, types, merges = byte_vocab()
    n_vocab, dim, n_heads, n_kv, hd, ffn = len(tokens), 32, 2, 1, 16, 64
    meta: list[tuple[str, int, Any]] = [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "fuzz"),
        ("llama.block_count", U32, 1),
        ("llama.context_length", U32, 128),
        ("llama.embedding_length", U32, dim),
        ("llama.feed_forward_length", U32, ffn),
        ("llama.attention.head_count", U32, n_heads),
        ("llama.attention.head_count_kv", U32, n_kv),
        ("llama.attention.key_length", U32, hd),
        ("llama.rope.freq_base", F32, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("general.alignment", U32, 32),
        ("tokenizer.ggml.model", STRING, "gpt2"),
        ("tokenizer.ggml.pre", STRING, "gpt2"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        ("tokenizer.ggml.token_type", ARRAY, (I32, types)),
        ("tokenizer.ggml.merges", ARRAY, (STRING, merges)),
        ("tokenizer.ggml.bos_token_id", U32, 0),
        ("tokenizer.ggml.eos_token_id", U32, 2),
        ("tokenizer.ggml.add_bos_token", BOOL, 0),
        ("tokenizer.chat_template", STRING, CHATML),
    ]

    def f32(*shape: int) -> bytes:
        return rng.standard_normal(shape).astype("<f4").tobytes()

    def q8(*shape: int) -> bytes:
        return _q8_0(rng.standard_normal(shape).astype(np.float32))

    tensors = [
        Tensor("token_embd.weight", [dim, n_vocab], Q8_0_TYPE, q8(n_vocab, dim)),
        Tensor("output_norm.weight", [dim], F32_TYPE, f32(dim)),
        Tensor("blk.0.attn_norm.weight", [dim], F32_TYPE, f32(dim)),
        Tensor("blk.0.attn_q.weight", [dim, n_heads * hd], Q8_0_TYPE, q8(n_heads * hd, dim)),
        Tensor("blk.0.attn_k.weight", [dim, n_kv * hd], Q8_0_TYPE, q8(n_kv * hd, dim)),
        Tensor(
            "blk.0.attn_v.weight",
            [dim, n_kv * hd],
            F16_TYPE,
            rng.standard_normal((n_kv * hd, dim)).astype("<f2").tobytes(),
        ),
        Tensor("blk.0.attn_output.weight", [n_heads * hd, dim], Q8_0_TYPE, q8(dim, n_heads * hd)),
        Tensor("blk.0.ffn_norm.weight", [dim], F32_TYPE, f32(dim)),
        Tensor("blk.0.ffn_gate.weight", [dim, ffn], Q8_0_TYPE, q8(ffn, dim)),
        Tensor("blk.0.ffn_up.weight", [dim, ffn], Q8_0_TYPE, q8(ffn, dim)),
        Tensor("blk.0.ffn_down.weight", [ffn, dim], F32_TYPE, f32(dim, ffn)),
    ]
    return Model(meta, tensors)


# ------------------------------------------------------------------ limits and the target


def load_everything(path: Path) -> None:
    """What a user's commands do with a file: `llamita info`, then a full load and one token."""
    import torch

    from llamita.engine.loader import load_model
    from llamita.jobs.model_info import model_info

    try:
        model_info(path)
        loaded = load_model(path, dtype="float32", device="cpu")
        ids = loaded.tokenizer.encode("hi")
        with torch.no_grad():
            loaded.model(torch.tensor([ids or [0]]))
    except LlamitaError:
        pass


def check(data: bytes | bytearray) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.gguf"
        path.write_bytes(bytes(data))
        with bounded(SECONDS_PER_EXAMPLE, MEMORY_HEADROOM):
            load_everything(path)


def test_valid_model_loads_and_runs(tmp_path):
    """The base every mutation starts from is a real model: without this the fuzzing would
    only ever exercise the first check."""
    import torch

    from llamita.engine.loader import load_model

    path = tmp_path / "valid.gguf"
    path.write_bytes(bytes(write(valid_model()).data))
    loaded = load_model(path, dtype="float32", device="cpu")
    assert loaded.config.n_layers == 1 and loaded.config.vocab_size == len(byte_vocab()[0])
    logits = loaded.model(torch.tensor([loaded.tokenizer.encode("hello")]))
    assert torch.isfinite(logits).all()


def test_bounded_catches_a_huge_allocation():
    """The memory guard works: otherwise a test passing would prove nothing about allocations."""
    with pytest.raises(MemoryError):
        with bounded(SECONDS_PER_EXAMPLE, MEMORY_HEADROOM):
            np.ones(4 << 30, dtype=np.uint8)


# ------------------------------------------------------------------ strategies

# Integers a hostile file would pick: zero, one, sign and width boundaries, sizes past any file.
EDGE_INTS = st.sampled_from(
    [
        0,
        1,
        2,
        3,
        7,
        31,
        32,
        33,
        255,
        4096,
        2**16,
        2**31 - 1,
        2**31,
        2**32 - 1,
        2**32,
        2**40,
        2**62,
        2**63 - 1,
        2**63,
        2**64 - 1,
    ]
)
ANY_U64 = st.one_of(EDGE_INTS, st.integers(0, 2**64 - 1))
ANY_U32 = st.one_of(EDGE_INTS.filter(lambda v: v < 2**32), st.integers(0, 2**32 - 1))
FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, -1.0, 1e-45, 1e38, float("inf"), float("-inf"), float("nan")]), st.floats(width=32)
)


def _typed_value(vtype: int) -> st.SearchStrategy[Any]:
    if vtype in (U8, BOOL):
        return st.integers(0, 255)
    if vtype == I8:
        return st.integers(-128, 127)
    if vtype == U16:
        return st.integers(0, 2**16 - 1)
    if vtype == I16:
        return st.integers(-(2**15), 2**15 - 1)
    if vtype == U32:
        return ANY_U32
    if vtype == I32:
        return st.integers(-(2**31), 2**31 - 1)
    if vtype == U64:
        return ANY_U64
    if vtype == I64:
        return st.integers(-(2**63), 2**63 - 1)
    if vtype in (F32, F64):
        return FLOATS
    if vtype == STRING:
        return st.one_of(
            st.text(max_size=20),
            st.binary(max_size=20),
            st.sampled_from(
                ["llama", "gpt2", "none", "linear", "yarn", "{{ x", "\udcff".encode("utf-8", "surrogatepass")]
            ),
        )
    raise AssertionError(vtype)


SCALAR_TYPES = [U8, I8, U16, I16, U32, I32, F32, BOOL, U64, I64, F64]


@st.composite
def any_value(draw: st.DrawFn, depth: int = 0) -> tuple[int, Any]:
    """A metadata value of any type, arrays included (of any element type, short)."""
    choices = SCALAR_TYPES + [STRING] + ([ARRAY] if depth < 3 else [])
    vtype = draw(st.sampled_from(choices))
    if vtype != ARRAY:
        return vtype, draw(_typed_value(vtype))
    etype = draw(st.sampled_from(choices))
    if etype == ARRAY:
        items = draw(st.lists(any_value(depth + 1).filter(lambda v: v[0] == ARRAY).map(lambda v: v[1]), max_size=3))
        return ARRAY, (ARRAY, items)
    return ARRAY, (etype, draw(st.lists(_typed_value(etype), max_size=8)))


@st.composite
def damaged_model(draw: st.DrawFn) -> Model:
    """The valid model with structured damage: metadata values retyped, resized or removed,
    tensor infos with wrong dims, types, shapes and offsets, lying counts."""
    model = valid_model()
    keys = [k for k, _, _ in model.metadata]
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["retype", "same_type", "drop", "duplicate", "add"]))
        i = draw(st.integers(0, len(model.metadata) - 1))
        key, vtype, value = model.metadata[i]
        if action == "retype":
            model.metadata[i] = (key, *draw(any_value()))
        elif action == "same_type" and vtype != ARRAY:
            model.metadata[i] = (key, vtype, draw(_typed_value(vtype)))
        elif action == "same_type":
            etype, items = value
            new = draw(st.lists(_typed_value(etype), max_size=8)) if etype != ARRAY else []
            model.metadata[i] = (
                key,
                ARRAY,
                (etype, draw(st.sampled_from([new, items[: len(items) // 2], items + new]))),
            )
        elif action == "drop":
            del model.metadata[i]
        elif action == "duplicate":
            model.metadata.append((key, *draw(any_value())))
        else:
            name = draw(
                st.sampled_from(
                    keys
                    + [
                        "llama.vocab_size",
                        "llama.rope.scaling.type",
                        "llama.rope.scaling.factor",
                        "llama.rope.dimension_count",
                        "llama.attention.value_length",
                        "tokenizer.ggml.eot_token_id",
                        "tokenizer.ggml.eom_token_id",
                        "general.file_type",
                    ]
                )
            )
            model.metadata.append((name, *draw(any_value())))
    for _ in range(draw(st.integers(0, 3))):
        t = model.tensors[draw(st.integers(0, len(model.tensors) - 1))]
        action = draw(st.sampled_from(["ne", "ndims", "type", "offset", "name", "data"]))
        if action == "ne" and t.ne:
            t.ne[draw(st.integers(0, len(t.ne) - 1))] = draw(ANY_U64)
        elif action == "ndims":
            t.ne = draw(st.lists(st.one_of(st.integers(0, 70), EDGE_INTS), min_size=0, max_size=6))
        elif action == "type":
            t.ggml_type = draw(st.one_of(st.integers(0, 40), ANY_U32))
        elif action == "offset":
            t.offset = draw(st.one_of(ANY_U64, st.integers(0, 80_000)))
        elif action == "name":
            t.name = draw(
                st.sampled_from(
                    [x.name for x in model.tensors]
                    + ["rope_freqs.weight", "output.weight", "blk.7.attn_q.weight", "blk.99999999999.ffn_up.weight"]
                )
            )
        else:
            t.data = t.data[: draw(st.integers(0, len(t.data)))]
    if draw(st.booleans()):
        model.tensors = draw(st.permutations(model.tensors))
    if draw(st.integers(0, 9)) == 0:
        model.n_kv = draw(ANY_U64)
    if draw(st.integers(0, 9)) == 0:
        model.n_tensors = draw(ANY_U64)
    if draw(st.integers(0, 9)) == 0:
        model.version = draw(st.one_of(st.integers(0, 4), ANY_U32))
    return model


@st.composite
def damaged_bytes(draw: st.DrawFn) -> bytearray:
    """A (possibly already damaged) model's bytes, then damaged at the byte level."""
    model = draw(damaged_model()) if draw(st.booleans()) else valid_model()
    out = write(model)
    data = out.data
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["field", "field", "byte", "truncate", "insert", "delete"]))
        if action == "field" and out.fields:
            at, width = draw(st.sampled_from(out.fields))
            value = draw(ANY_U64) % (1 << (8 * width))
            data[at : at + width] = value.to_bytes(width, "little")
        elif action == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif action == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete" and data:
            at = draw(st.integers(0, len(data) - 1))
            del data[at : at + draw(st.integers(1, 16))]
    return data


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@FUZZ
@given(damaged_model())
def test_structurally_damaged_files_end_in_typed_errors(model):
    check(write(model).data)


@FUZZ
@given(damaged_bytes())
def test_byte_damaged_files_end_in_typed_errors(data):
    check(data)


# ------------------------------------------------------------------ what the fuzzing found


def _with(key: str, vtype: int, value: Any) -> Model:
    model = valid_model()
    model.metadata = [(k, t, v) for k, t, v in model.metadata if k != key] + [(key, vtype, value)]
    return model


@pytest.mark.parametrize(
    "key, vtype, value, message",
    [
        ("llama.embedding_length", STRING, "32", "'llama.embedding_length' must be an integer"),
        ("llama.block_count", ARRAY, (U32, [1]), "'llama.block_count' must be an integer"),
        ("llama.attention.head_count", U32, 0, "head_count' must be positive"),
        ("llama.rope.freq_base", F32, float("nan"), "freq_base' must be a finite number"),
        ("llama.block_count", U32, 2**32 - 1, "declares 4294967295 layers but the file holds only 11"),
        ("tokenizer.ggml.tokens", U8, 1, "tokenizer.ggml.tokens must be a list of str"),
        ("tokenizer.ggml.merges", ARRAY, (I32, [1, 2]), "tokenizer.ggml.merges must be a list of str"),
        ("tokenizer.ggml.bos_token_id", STRING, "0", "bos_token_id must be int"),
        ("tokenizer.chat_template", U32, 7, "tokenizer.chat_template must be str"),
        ("general.file_type", ARRAY, (U8, []), None),  # `llamita info` shows "unknown"
    ],
)
def test_wrong_metadata_types_are_named(tmp_path, key, vtype, value, message):
    from llamita.engine.loader import load_model
    from llamita.jobs.model_info import model_info

    path = tmp_path / "bad.gguf"
    path.write_bytes(bytes(write(_with(key, vtype, value)).data))
    if message is None:
        assert model_info(path)["quantization"] == "unknown"
        return
    with pytest.raises(LlamitaError, match=message):
        with bounded(SECONDS_PER_EXAMPLE, MEMORY_HEADROOM):
            model_info(path)
            load_model(path, dtype="float32", device="cpu")


def test_info_command_names_a_corrupt_file(tmp_path):
    """`llamita info` on a damaged file: one line naming the problem, exit 1, no traceback."""
    from typer.testing import CliRunner

    from llamita.cli.main import app

    path = tmp_path / "bad.gguf"
    path.write_bytes(bytes(write(_with("llama.embedding_length", STRING, "x")).data))
    result = CliRunner().invoke(app, ["info", "--model", str(path)])
    assert result.exit_code == 1
    assert "embedding_length' must be an integer" in result.output
    assert "Traceback" not in result.output
