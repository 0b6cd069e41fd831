"""FusedLinear (q/k/v and gate/up as one kernel call) against the layers it joins.

The fused call must give each part's output bit for bit in decode (the packed int4 rows and
per-row int8 rows are computed independently), add no memory, and step aside once a part is
replaced. Prefill (128+ rows) runs oneDNN's bfloat16 matmul over the expanded weight, whose
tiling follows the number of output rows: there a few elements may round the other way.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from llamita.config import ModelConfig
from llamita.kernels import native
from llamita.kernels.int4 import VNNI_LAYOUTS, _probe_layout, concat_int4, int4_supported
from llamita.kernels.int8 import int8_supported, quantize_int8
from llamita.model.linear import DENSE_MIN_ROWS, Int4Linear, Int8Linear, fuse_linears
from llamita.model.transformer import Transformer
from llamita.weights.q4_pack import pack_q4
from llamita.weights.quants import GGMLType, quantize

requires_int4 = pytest.mark.skipif(not int4_supported(), reason="no packed int4 CPU matmul here")
LAYOUTS = [
    pytest.param("vnni", marks=pytest.mark.skipif(not native.vnni_kernels(), reason="no VNNI kernel")),
    pytest.param("torch", marks=pytest.mark.skipif(_probe_layout() is None, reason="no torch int4")),
]
requires_int8 = pytest.mark.skipif(not int8_supported(), reason="no int8 weight-only CPU matmul here")


def _int4(out_features: int, in_features: int, seed: int, layout: str | None = None) -> Int4Linear:
    gen = torch.Generator().manual_seed(seed)
    raw = quantize(torch.randn(out_features, in_features, generator=gen) * 0.05, GGMLType.Q4_1)
    return Int4Linear(pack_q4(raw, GGMLType.Q4_1, (out_features, in_features), layout))


def _int8(out_features: int, in_features: int, seed: int) -> Int8Linear:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=gen)
    return Int8Linear(quantize_int8(out_features, in_features, lambda a, b: w[a:b]))


def _same(got: torch.Tensor, want: torch.Tensor, rows: int) -> bool:
    if rows < DENSE_MIN_ROWS:
        return torch.equal(got, want)
    # A few elements round the other way: at most one bfloat16 step (2**-7 relative) at the
    # output's scale (an element near zero can come from a cancellation, so not its own scale).
    off = (got.float() - want.float()).abs() > 2**-7 * want.float().abs().max()
    return not off.any() and bool((got != want).float().mean() < 1e-2)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rows", [1, 3, 200])  # decode, a few rows, the dense prefill path
def test_int4_parts_match(rows: int, layout: str) -> None:
    # The default model's q/k/v shapes: 576 + 192 + 192 rows (whole 64-row blocks).
    parts = [_int4(576, 576, 0, layout), _int4(192, 576, 1, layout), _int4(192, 576, 2, layout)]
    x = torch.randn(1, rows, 576, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
    alone = [p(x) for p in parts]
    fused = fuse_linears(parts)
    assert fused is not None
    got = fused(x)
    assert [g.shape for g in got] == [a.shape for a in alone]
    assert all(_same(g, a, rows) for g, a in zip(got, alone))
    # The parts now read views of the joined codes: still right, no second copy.
    assert all(torch.equal(p(x), a) for p, a in zip(parts, alone))
    joined = fused.inner.packed
    assert all(p.packed.untyped_storage().data_ptr() == joined.untyped_storage().data_ptr() for p in parts)
    if layout in VNNI_LAYOUTS:  # the scales too (a fifth of the codes' size)
        scales = fused.inner.scales_and_zeros.untyped_storage().data_ptr()
        assert all(p.scales_and_zeros.untyped_storage().data_ptr() == scales for p in parts)


@pytest.mark.skipif(_probe_layout() is None, reason="no torch int4")
def test_int4_rows_off_the_packed_blocks_are_not_joined() -> None:
    block = _probe_layout().block_n
    if block == 16:
        pytest.skip("every allowed row count fills a 16-row block")
    parts = [_int4(block + 16, 64, 3, "torch"), _int4(64, 64, 4, "torch")]  # a tail block first
    assert concat_int4([p.weight_int4 for p in parts]) is None
    assert fuse_linears(parts) is None
    # The last part may end anywhere: nothing follows its tail block.
    tail_last = [_int4(64, 64, 5, "torch"), _int4(block + 16, 64, 6, "torch")]
    x = torch.randn(2, 64).to(torch.bfloat16)
    alone = [p(x) for p in tail_last]
    fused = fuse_linears(tail_last)
    assert fused is not None and all(torch.equal(g, a) for g, a in zip(fused(x), alone))


@pytest.mark.skipif(not native.vnni_kernels(), reason="no VNNI kernel")
def test_vnni_rows_join_at_any_16_rows() -> None:
    # Its blocks are 16 rows, the least any int4 weight has: every part joins.
    parts = [_int4(80, 64, 3, "vnni"), _int4(48, 64, 4, "vnni"), _int4(16, 64, 5, "vnni")]
    x = torch.randn(3, 64).to(torch.bfloat16)
    alone = [p(x) for p in parts]
    fused = fuse_linears(parts)
    assert fused is not None and all(torch.equal(g, a) for g, a in zip(fused(x), alone))
    mixed = [_int4(64, 64, 6, "vnni"), _int4(64, 64, 7, "torch")]
    if _probe_layout() is not None:
        assert concat_int4([p.weight_int4 for p in mixed]) is None


@requires_int8
def test_int8_parts_bit_for_bit() -> None:
    parts = [_int8(1536, 576, 7), _int8(1536, 576, 8)]
    x = torch.randn(2, 576).to(torch.bfloat16)
    alone = [p(x) for p in parts]
    fused = fuse_linears(parts)
    assert fused is not None
    assert all(torch.equal(g, a) for g, a in zip(fused(x), alone))


@requires_int4
def test_mixed_or_dense_parts_stay_apart() -> None:
    assert fuse_linears([nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False)]) is None
    assert fuse_linears([_int4(64, 64, 9), nn.Linear(64, 64, bias=False)]) is None
    assert fuse_linears([_int4(64, 64, 10), _int4(64, 128, 11)]) is None  # other inputs


@requires_int4
def test_fused_steps_aside_when_a_part_is_replaced() -> None:
    parts = [_int4(64, 64, 12), _int4(64, 64, 13)]
    fused = fuse_linears(parts)
    assert fused is not None and fused.serves(*parts)
    assert not fused.serves(parts[0], nn.Linear(64, 64, bias=False))
    assert not fused.serves(parts[0])


def _compact_state(cfg: ModelConfig, joined: list[weakref.ref[torch.Tensor]]) -> dict[str, object]:
    """A state dict with every block's linear weights as Q4_1 Int4Weight; weak references to
    the codes of the ones fuse_projections joins (q/k/v, gate/up) go to `joined`."""
    state: dict[str, object] = {}
    for i, (name, tensor) in enumerate(Transformer(cfg).state_dict().items()):
        if name.startswith("layers.") and name.endswith("_proj.weight"):
            gen = torch.Generator().manual_seed(i)
            raw = quantize(torch.randn(tensor.shape, generator=gen) * 0.05, GGMLType.Q4_1)
            weight = pack_q4(raw, GGMLType.Q4_1, tuple(tensor.shape))
            state[name] = weight
            if not name.endswith(("o_proj.weight", "down_proj.weight")):
                joined.append(weakref.ref(weight.packed))
        else:
            state[name] = tensor
    return state


@requires_int4
def test_building_a_model_frees_the_parts_that_fuse_projections_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Transformer.from_state_dict hands each compact weight to its module and keeps no other
    reference, so the q/k/v and gate/up codes that the joins replace are freed as they are
    joined, not when the build returns (a dict of them held an 8B's parts, 2.3 GB, to the end).
    The state dict is handed over as the loader hands it (`Checkpoint.take_state()`)."""
    cfg = ModelConfig(n_layers=2, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=32)
    parts: list[weakref.ref[torch.Tensor]] = []
    join = Transformer.fuse_projections

    def join_then_check(model: Transformer) -> None:
        join(model)
        gc.collect()
        assert [p for p in parts if p() is not None] == []

    monkeypatch.setattr(Transformer, "fuse_projections", join_then_check)
    model = Transformer.from_state_dict(cfg, _compact_state(cfg, parts))
    assert len(parts) == 10
    assert model.layers[0].self_attn.fused_qkv is not None  # the joins happened
