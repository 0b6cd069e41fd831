"""Every SIMD level of llamita's kernels (native.KERNEL_LEVELS: AVX-512 VNNI, AVX-VNNI, AVX2) on
every level this CPU has, each against a slow, obviously correct float64 statement.

All levels work on the same packed layouts, so one packed weight serves every level; a level
the CPU lacks is skipped with the reason. The references:
- the same math in float64: the layout's weights W = a q + b per group of 32 (decoded with torch
  ops from the packed bytes), times the activations quantized to int8 per 32 as documented
  (tests/vnni_reference.py); the kernel may differ only by its float32 roundings (a bound
  derived from the magnitudes of its terms, not tuned);
- the unquantized product with the same weights, within what the int8 rounding of x allows;
- the levels against each other: integer sums are exact and the float32 steps are the same, so
  every level returns the same bits (matmuls, dequantization, packing at load).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from llamita.kernels import int4, int8, native
from llamita.weights.q4_pack import pack_q4
from llamita.weights.quants import GGMLType, quantize
from tests.vnni_reference import int8_activations

E32 = 2.0**-24  # float32 unit roundoff
LEVELS = [lv.name for lv in native.KERNEL_LEVELS]
# Odd shapes: 5 blocks of 16 rows; K not a power of two (15 groups of 32, 3 Q4_K super-blocks).
KINDS = {
    "q4_0": (GGMLType.Q4_0, (80, 480)),
    "q4_1": (GGMLType.Q4_1, (80, 480)),
    "q4_k": (GGMLType.Q4_K, (80, 768)),
    "q8": (None, (80, 352)),
}


def _ops(level: str):
    ops = native.level_ops(level)
    if ops is None:
        pytest.skip(f"kernel level {level} is unavailable here: {native.kernel_level_skipped(level)}")
    return ops


def _any_level():
    for level in LEVELS:
        if native.level_ops(level) is not None:
            return native.level_ops(level)
    pytest.skip(f"no kernel level loads here: {native.kernel_level_skipped()}")


def _weight(kind: str, seed: int) -> tuple[object, tuple[int, int]]:
    t, shape = KINDS[kind]
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen) * 0.05
    if t is None:
        return int8.quantize_int8(*shape, lambda a, b: w[a:b], layout="vnni"), shape
    return pack_q4(quantize(w, t), t, shape, "vnni_k" if t == GGMLType.Q4_K else "vnni"), shape


def _affine(w: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The packed weight as float64 (codes q (n, g, 32), a (n, g), b (n, g)), W = a q + b."""
    if isinstance(w, int8.Int8Weight):
        n, k = w.qweight.shape
        q = int8._row_order(w.qweight).double().view(n, k // 32, 32)
        a = w.scales.double().unsqueeze(1).expand(n, k // 32)
        return q, a, torch.zeros_like(a)
    g = w.in_features // 32
    q = int4._vnni_decode(w.packed).double().view(w.out_features, g, 32)
    if w.layout == "vnni":
        s, z = (t.double() for t in int4._vnni_scale_zero(w.scales_and_zeros))
        return q, s, z - 8 * s
    sc, mn, d, dmin = int4._vnni_k_parts(w.scales_and_zeros)
    a = d.double().repeat_interleave(8, dim=1) * sc.double()
    b = -dmin.double().repeat_interleave(8, dim=1) * mn.double()
    return q, a, b


def _mm(ops, w: object, x: torch.Tensor) -> torch.Tensor:
    if isinstance(w, int8.Int8Weight):
        return ops.q8_vnni_mm(x, w.qweight, w.scales)
    mm = ops.q4_vnni_mm if w.layout == "vnni" else ops.q4k_vnni_mm
    return mm(x, w.packed, w.scales_and_zeros)


def _statement(x: torch.Tensor, w: object) -> tuple[torch.Tensor, torch.Tensor]:
    """float64: (dequantized W) @ (int8-quantized x), and the bound of the kernel's float32
    roundings: a handful per group term, then one per group in the sum over g."""
    q, a, b = _affine(w)
    xq, d = int8_activations(x)  # (m, g, 32), (m, g)
    weights = (a.unsqueeze(-1) * q + b.unsqueeze(-1)).flatten(1)  # (n, k)
    y = F.linear((xq * d.unsqueeze(-1)).flatten(1), weights)
    terms = (
        torch.einsum("mgk,ngk->mng", xq.abs(), q.abs()) * a.abs().unsqueeze(0)
        + xq.sum(-1).abs().unsqueeze(1) * b.abs().unsqueeze(0)
    ) * d.unsqueeze(1)  # (m, n, g)
    return y, (8 + q.shape[1]) * E32 * terms.sum(-1)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("m", [1, 2, 3, 8, 13, 512])  # 512: a prefill chunk
def test_matmul_is_its_float64_statement(level: str, kind: str, m: int) -> None:
    ops = _ops(level)
    w, (n, k) = _weight(kind, 10 + m)
    for dtype in (torch.float32, torch.bfloat16):  # the kernels take either as it is
        x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3).to(dtype)
        y = _mm(ops, w, x)
        assert y.dtype == torch.float32 and y.shape == (m, n)
        want, bound = _statement(x, w)
        err = (y.double() - want).abs()
        assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_matmul_close_to_unquantized_activations(level: str, kind: str) -> None:
    """|y - W x| <= sum_k |W| |x - d xq| + float32 sums, with |x - d xq| <= d / 2 per element."""
    ops = _ops(level)
    w, (n, k) = _weight(kind, 30)
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(3))
    q, a, b = _affine(w)
    weights = (a.unsqueeze(-1) * q + b.unsqueeze(-1)).flatten(1)
    exact = F.linear(x.double(), weights)
    d = x.double().abs().view(5, -1, 32).amax(-1) / 127
    bound = F.linear(d.repeat_interleave(32, dim=1) / 2, weights.abs()) + 1e-5 * F.linear(
        x.double().abs(), weights.abs()
    )
    err = (_mm(ops, w, x).double() - exact).abs()
    assert (err <= bound).all(), f"max err/bound {(err / bound).max():.3g}"
    assert (err.max() / exact.abs().max()).item() < 2**-6


def test_every_level_returns_the_same_bits() -> None:
    here = [level for level in LEVELS if native.level_ops(level) is not None]
    if len(here) < 2:
        pytest.skip(f"fewer than two kernel levels here: {native.kernel_level_skipped()}")
    ops = {level: native.level_ops(level) for level in here}
    gen = torch.Generator().manual_seed(7)
    for kind in KINDS:
        w, (n, k) = _weight(kind, 40)
        for m in (1, 2, 3, 5, 8, 13, 23, 512):
            x = torch.randn(m, k, generator=gen) * 2
            ys = [_mm(o, w, x) for o in ops.values()]
            assert all(torch.equal(y, ys[0]) for y in ys[1:]), (kind, m)
        for dtype in (torch.float32, torch.bfloat16):
            if isinstance(w, int8.Int8Weight):
                dense = [o.q8_vnni_dequantize(w.qweight, w.scales, dtype) for o in ops.values()]
            else:
                name = "q4_vnni_dequantize" if w.layout == "vnni" else "q4k_vnni_dequantize"
                dense = [getattr(o, name)(w.packed, w.scales_and_zeros, dtype) for o in ops.values()]
            assert all(torch.equal(t, dense[0]) for t in dense[1:]), (kind, dtype)


@pytest.mark.parametrize("level", LEVELS)
def test_threads_do_not_change_the_bits(level: str) -> None:
    """Prefill's rows are quantized by all threads and the blocks split among them; every row
    is quantized alone and every block summed alone, so 1 and 2 threads give the same bits."""
    ops = _ops(level)
    before = torch.get_num_threads()
    try:
        for kind in KINDS:
            w, (n, k) = _weight(kind, 60)
            x = torch.randn(512, k, generator=torch.Generator().manual_seed(4)) * 2
            ys = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                ys.append(_mm(ops, w, x))
            assert torch.equal(ys[0], ys[1]), kind
    finally:
        torch.set_num_threads(before)


def _odd_scale_blocks(t: GGMLType, shape: tuple[int, int]) -> tuple[torch.Tensor, set[int]]:
    """GGUF bytes of `shape` with f16 scales set to inf, -inf, NaN, subnormals and the largest
    finite value in a few blocks; the rows whose blocks hold a non-finite one."""
    gen = torch.Generator().manual_seed(int(t))
    raw = quantize(torch.randn(shape, generator=gen) * 0.05, t).clone()
    size = {GGMLType.Q4_0: 18, GGMLType.Q4_1: 20, GGMLType.Q4_K: 144}[t]
    blocks = raw.view(-1, size)
    per_row = blocks.shape[0] // shape[0]
    # (block, byte offset, f16 bits): d of Q4_0/1/K; m of Q4_1 or dmin of Q4_K at offset 2.
    odd = [(5, 0, 0x7C00), (40, 0, 0x7E00), (77, 0, 0x0001), (11, 0, 0x7BFF), (60, 0, 0x03FF)]
    if t != GGMLType.Q4_0:
        odd += [(23, 2, 0xFC00), (70, 2, 0x0002), (90, 2, 0x7BFF)]
    for block, at, bits in odd:
        blocks[block, at : at + 2] = torch.tensor([bits & 0xFF, bits >> 8], dtype=torch.uint8)
    halves = blocks[:, :4].contiguous().view(torch.float16)  # (blocks, 2): d and m / dmin
    scales = halves if t != GGMLType.Q4_0 else halves[:, :1]
    bad = {int(b) // per_row for b in (~scales.isfinite()).any(-1).nonzero().flatten()}
    return raw, bad


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("t", [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K], ids=lambda t: t.name)
def test_inf_nan_subnormal_f16_scales(level: str, t: GGMLType) -> None:
    """Packed at load by this level's own op; a row with an inf/NaN scale comes out non-finite,
    every other row (subnormal and largest-finite scales included) is its float64 statement."""
    ops = _ops(level)
    shape = (48, 512)
    raw, bad = _odd_scale_blocks(t, shape)
    if t == GGMLType.Q4_K:
        codes, meta = ops.q4k_vnni_pack_ggml(raw, *shape)
        w = int4.Int4Weight(codes, meta, *shape, layout="vnni_k")
    else:
        codes, sz = ops.q4_vnni_pack_ggml(raw, *shape, t == GGMLType.Q4_1)
        w = int4.Int4Weight(codes, sz, *shape, layout="vnni")
    assert bad
    x = torch.randn(3, shape[1], generator=torch.Generator().manual_seed(1))
    y = _mm(ops, w, x)
    good = torch.tensor([r not in bad for r in range(shape[0])])
    assert not y[:, ~good].isfinite().any()
    want, bound = _statement(x, w)
    err = (y[:, good].double() - want[:, good]).abs()
    assert (err <= bound[:, good]).all(), f"max err/bound {(err / bound[:, good]).max():.3g}"


@pytest.mark.parametrize("level", LEVELS)
def test_int8_inf_nan_subnormal_scales(level: str) -> None:
    ops = _ops(level)
    w, (n, k) = _weight("q8", 50)
    scales = w.scales.clone()
    # A float32-subnormal scale (its products round to multiples of 2^-149) and a huge one whose
    # products stay finite.
    scales[3], scales[17], scales[30], scales[44] = float("inf"), float("nan"), 2.0**-130, 1.0e30
    w = int8.Int8Weight(w.qweight, scales, "vnni")
    x = torch.randn(2, k, generator=torch.Generator().manual_seed(2))
    y = _mm(ops, w, x)
    assert not y[:, [3, 17]].isfinite().any()
    good = torch.ones(n, dtype=torch.bool)
    good[[3, 17]] = False
    want, bound = _statement(x, w)
    bound = bound + 2.0**-149  # the last multiply's underflow to a subnormal
    err = (y[:, good].double() - want[:, good]).abs()
    assert (err <= bound[:, good]).all(), f"max err/bound {(err / bound[:, good]).max():.3g}"


@pytest.mark.parametrize("level", LEVELS)
def test_load_packing_is_the_same_at_every_level(level: str) -> None:
    ops = _ops(level)
    reference = _any_level()
    for t in (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K):
        raw, _ = _odd_scale_blocks(t, (48, 512))
        if t == GGMLType.Q4_K:
            got, want = ops.q4k_vnni_pack_ggml(raw, 48, 512), reference.q4k_vnni_pack_ggml(raw, 48, 512)
        else:
            args = (raw, 48, 512, t == GGMLType.Q4_1)
            got, want = ops.q4_vnni_pack_ggml(*args), reference.q4_vnni_pack_ggml(*args)
        for g, r in zip(got, want):  # bytes, so NaN scales compare too
            assert torch.equal(g.view(torch.uint8), r.view(torch.uint8)), t.name


def _choice(env: dict[str, str]) -> list[str]:
    code = (
        "from llamita.kernels import native; import json; "
        "print(json.dumps([native.kernel_level(), native.kernel_level_skipped()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_best_level_the_cpu_allows_is_chosen() -> None:
    """LLAMITA_ISA holds a process to a level (flags are read per process: subprocesses)."""
    flags = native._proc_cpu_flags()
    for isa in ("avx2", "avx_vnni", "avx512_vnni"):
        if not native._BY_NAME[isa].cpu_flags <= flags:
            continue
        assert _choice({"LLAMITA_ISA": isa})[0] == isa
    level, why = _choice({"LLAMITA_ISA": "generic"})
    assert level is None and "avx2" in why and "LLAMITA_ISA=generic" in why
    level, why = _choice({"LLAMITA_NATIVE_KERNELS": "0"})
    assert level is None and "LLAMITA_NATIVE_KERNELS=0" in why
