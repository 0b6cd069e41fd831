"""llamita's sample_top_k (kernels/csrc/sampling.cpp) at every SIMD level this CPU has, against
the sampler chain stated in float64: top_k (ties to the lower id), top_p and min_p at
temperature 1, then the draw over the survivors in id order by the row's uniform."""

from __future__ import annotations

import math

import pytest
import torch

from llamita.kernels import native

LEVELS = [lv.name for lv in native.KERNEL_LEVELS]


def _ops(level: str):  # noqa: ANN202
    ops = native.level_ops(level)
    if ops is None:
        pytest.skip(f"kernel level {level} is unavailable here: {native.kernel_level_skipped(level)}")
    return ops


def _reference(row: torch.Tensor, k: int, top_p: float, min_p: float, temperature: float, u: float) -> int:
    values = row.double()
    if torch.isnan(values).any() or not torch.isfinite(values.max()):
        return -1
    order = torch.sort(-values, stable=True).indices[:k]  # best first, ties to the lower id
    best = float(values[order[0]])
    keep = torch.ones(len(order), dtype=torch.bool)
    if top_p < 1.0:
        probs = torch.softmax(values[order], dim=0)
        before = probs.cumsum(0) - probs
        keep &= before < top_p
        keep[0] = True
    if min_p > 0.0:
        keep &= values[order] >= best + math.log(min_p)
        keep[0] = True
    survivors = torch.sort(order[keep]).values  # in id order
    weights = torch.exp((values[survivors] - best) / temperature)
    running = weights.cumsum(0)
    at = int((running > u * running[-1]).nonzero()[0]) if bool((running > u * running[-1]).any()) else -1
    return int(survivors[at])


def _call(ops, logits, k, top_p, min_p, temperature, uniform) -> list[int]:  # noqa: ANN001
    b = logits.shape[0]
    columns = [v if isinstance(v, list) else [v] * b for v in (k, top_p, min_p, temperature, uniform)]
    return ops.sample_top_k(logits, torch.tensor(columns, dtype=torch.float64).T.contiguous()).tolist()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    "k, top_p, min_p, temperature",
    [
        (40, 0.95, 0.05, 0.8),  # the defaults (llama.cpp's and Ollama's)
        (40, 1.0, 0.0, 1.0),  # top_k alone
        (1, 1.0, 0.0, 1.0),
        (7, 0.5, 0.0, 0.1),
        (300, 0.9, 0.0, 2.0),
        (1000, 1.0, 0.3, 0.7),
        (5000, 0.99, 0.01, 1.0),  # more than the vocabulary: all of it
    ],
)
@pytest.mark.parametrize("vocab, scale", [(3001, 3.0), (1000, 0.3), (49152, 4.0)])
def test_sample_top_k_equals_the_float64_chain(
    level: str, k: int, top_p: float, min_p: float, temperature: float, vocab: int, scale: float
) -> None:
    ops = _ops(level)
    gen = torch.Generator().manual_seed(vocab + k)
    logits = torch.randn(13, vocab, generator=gen) * scale
    logits[2, ::3] = -math.inf  # masked tokens (a grammar) are never drawn
    uniform = torch.rand(13, dtype=torch.float64, generator=gen).tolist()
    uniform[0], uniform[1] = 0.0, 1.0 - 2**-53
    got = _call(ops, logits, k, top_p, min_p, temperature, uniform)
    expected = [_reference(logits[b], min(k, vocab), top_p, min_p, temperature, uniform[b]) for b in range(13)]
    assert got == expected


@pytest.mark.parametrize("level", LEVELS)
def test_ties_go_to_the_lower_id_and_rows_keep_their_own_parameters(level: str) -> None:
    ops = _ops(level)
    gen = torch.Generator().manual_seed(3)
    logits = torch.randint(-3, 4, (8, 517), generator=gen).float()  # seven values: ties everywhere
    ks = [1, 2, 5, 40, 100, 517, 3, 60]
    top_ps = [1.0, 0.5, 0.9, 0.95, 0.2, 1.0, 0.7, 0.99]
    min_ps = [0.0, 0.1, 0.0, 0.05, 0.5, 0.0, 0.01, 0.2]
    temps = [1.0, 0.5, 1.5, 0.8, 3.0, 0.05, 1.0, 0.9]
    for trial in range(20):
        uniform = torch.rand(8, dtype=torch.float64, generator=gen).tolist()
        got = _call(ops, logits, ks, top_ps, min_ps, temps, uniform)
        expected = [_reference(logits[b], ks[b], top_ps[b], min_ps[b], temps[b], uniform[b]) for b in range(8)]
        assert got == expected, trial


@pytest.mark.parametrize("level", LEVELS)
def test_a_padded_vocabulary_is_read_through_its_row_stride(level: str) -> None:
    ops = _ops(level)
    padded = torch.randn(4, 1040, generator=torch.Generator().manual_seed(5)) * 2
    padded[:, 1000:] = 50.0  # the padding would win every draw if it were read
    view = padded[:, :1000]
    got = _call(ops, view, 40, 0.95, 0.05, 0.8, [0.1, 0.5, 0.9, 0.3])
    assert max(got) < 1000
    assert got == _call(ops, view.contiguous(), 40, 0.95, 0.05, 0.8, [0.1, 0.5, 0.9, 0.3])


@pytest.mark.parametrize("level", LEVELS)
def test_rows_without_a_finite_best_logit_get_minus_one(level: str) -> None:
    ops = _ops(level)
    logits = torch.randn(4, 100)
    logits[0, 57] = math.nan  # NaN anywhere, even where it would not be a candidate
    logits[1] = -math.inf
    logits[2, 3] = math.inf
    got = _call(ops, logits, 40, 0.95, 0.05, 0.8, 0.5)
    assert got[:3] == [-1, -1, -1]
    assert 0 <= got[3] < 100


@pytest.mark.parametrize("level", LEVELS)
def test_bad_arguments_are_refused(level: str) -> None:
    ops = _ops(level)
    logits = torch.randn(2, 50)
    with pytest.raises(RuntimeError, match="rows must be"):
        ops.sample_top_k(logits, torch.tensor([[40.0, 0.9, 0.0, 1.0, 0.5]], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="rows must be"):
        ops.sample_top_k(logits, torch.tensor([[40.0, 0.9, 0.0, 1.0, 0.5]] * 2))
    with pytest.raises(RuntimeError, match="top_k >= 1"):
        _call(ops, logits, 0, 0.9, 0.0, 1.0, 0.5)
    with pytest.raises(RuntimeError, match="temperature > 0"):
        _call(ops, logits, 40, 0.9, 0.0, 0.0, 0.5)
    with pytest.raises(RuntimeError, match="float32"):
        _call(ops, logits.double(), 40, 0.9, 0.0, 1.0, 0.5)
