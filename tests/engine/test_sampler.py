"""Sampler: each parameter changes the draws exactly as llama.cpp's chain says it should."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from llamita.engine import sampler as sampler_module
from llamita.engine.sampler import (
    Sampler,
    apply_penalties,
    filter_logits,
    penalty_window,
    top_logprobs,
)
from llamita.sampling_params import SamplingParams

# Every filter off; a test turns on the one it checks.
PLAIN = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
# logits whose softmax at temperature 1 is exactly this distribution.
PROBS = [0.5, 0.3, 0.15, 0.05]
LOGITS = torch.tensor(PROBS).log()


def draw(params: SamplingParams, logits: torch.Tensor, n: int, history: list[int] | torch.Tensor = ()) -> list[int]:
    """n tokens drawn by one sampler from the same logits and history."""
    sampler = Sampler(params)
    return [sampler.sample(logits, history) for _ in range(n)]


def entropy(samples: list[int]) -> float:
    counts = Counter(samples)
    return -sum(c / len(samples) * math.log(c / len(samples)) for c in counts.values())


def random_logits(seed: int, vocab_size: int = 64) -> torch.Tensor:
    return torch.randn(vocab_size, generator=torch.Generator().manual_seed(seed)) * 3


# --- the draw itself -------------------------------------------------------------------------


def test_plain_sampling_reaches_every_token() -> None:
    # The baseline the filter tests contrast with: with no filter, even p=0.05 shows up.
    assert set(draw(PLAIN, LOGITS, 400)) == {0, 1, 2, 3}


def test_same_seed_repeats_the_sequence_and_another_seed_differs() -> None:
    logits = torch.zeros(100)  # uniform over 100 tokens
    first = draw(PLAIN.replace(seed=7), logits, 50)
    assert draw(PLAIN.replace(seed=7), logits, 50) == first
    assert draw(PLAIN.replace(seed=8), logits, 50) != first
    assert len(set(first)) > 10


def test_without_a_seed_two_samplers_differ() -> None:
    logits = torch.zeros(100)
    assert draw(PLAIN.replace(seed=None), logits, 50) != draw(PLAIN.replace(seed=None), logits, 50)


def test_empirical_frequencies_follow_the_softmax() -> None:
    samples = draw(PLAIN, LOGITS, 2000)
    for token, p in enumerate(PROBS):
        assert abs(samples.count(token) / len(samples) - p) < 0.035  # > 3 standard deviations


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_accepts_any_float_dtype(dtype: torch.dtype) -> None:
    logits = random_logits(0).to(dtype)
    greedy = Sampler(SamplingParams.greedy())
    assert greedy.sample(logits, []) == int(torch.argmax(logits.float()))
    assert draw(PLAIN, logits, 20) == draw(PLAIN, logits.float(), 20)


def test_history_may_be_a_list_or_a_tensor() -> None:
    params = PLAIN.replace(repetition_penalty=1.5, frequency_penalty=0.5)
    logits, history = random_logits(3), [5, 6, 5, 1, 0]
    assert draw(params, logits, 30, history) == draw(params, logits, 30, torch.tensor(history))


def test_rejects_a_batch_of_logits() -> None:
    with pytest.raises(ValueError, match="shape"):
        Sampler(PLAIN).sample(torch.zeros(2, 8), [])


# --- temperature -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_temperature_zero_is_argmax(seed: int) -> None:
    logits = random_logits(seed)
    sampler = Sampler(SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0))
    assert {sampler.sample(logits, []) for _ in range(20)} == {int(torch.argmax(logits))}


def test_lower_temperature_concentrates() -> None:
    logits = random_logits(1, vocab_size=16) / 3  # roughly N(0, 1): a broad distribution
    entropies = [entropy(draw(PLAIN.replace(temperature=t), logits, 1000)) for t in (2.0, 1.0, 0.3)]
    assert entropies[0] > entropies[1] + 0.1 > entropies[2] + 0.2


def test_tiny_temperature_does_not_overflow() -> None:
    logits = random_logits(2)
    assert set(draw(PLAIN.replace(temperature=1e-30), logits, 10)) == {int(torch.argmax(logits))}


# --- top_k -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_top_k_1_is_argmax_even_at_high_temperature(seed: int) -> None:
    logits = random_logits(seed) / 3
    samples = draw(PLAIN.replace(top_k=1, temperature=100.0), logits, 50)
    assert set(samples) == {int(torch.argmax(logits))}


def test_top_k_keeps_exactly_the_k_most_likely() -> None:
    logits = random_logits(4) / 3
    samples = draw(PLAIN.replace(top_k=3, temperature=50.0), logits, 600)
    assert set(samples) == set(torch.topk(logits, 3).indices.tolist())


# --- top_p -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [(0.3, {0}), (0.5, {0}), (0.75, {0, 1}), (0.8, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})],
)
def test_top_p_keeps_the_smallest_prefix_reaching_top_p(top_p: float, kept: set[int]) -> None:
    # cumulative probabilities are 0.5, 0.8, 0.95, 1.0
    filtered = filter_logits(LOGITS, PLAIN.replace(top_p=top_p))
    assert set(torch.isfinite(filtered).nonzero().flatten().tolist()) == kept


def test_top_p_cut_on_a_hand_computed_distribution() -> None:
    # Shuffled so the cut cannot rely on token order.
    order = [2, 0, 3, 1]  # token i carries PROBS[order[i]]
    logits = LOGITS[order]
    samples = draw(PLAIN.replace(top_p=0.75), logits, 2000)
    assert set(samples) == {1, 3}  # the tokens carrying 0.5 and 0.3
    # Renormalized within the kept set: 0.5 / 0.8.
    assert abs(samples.count(1) / len(samples) - 0.625) < 0.035


def test_small_top_p_keeps_only_the_top_token() -> None:
    logits = random_logits(5) / 3
    samples = draw(PLAIN.replace(top_p=0.01, temperature=20.0), logits, 100)
    assert set(samples) == {int(torch.argmax(logits))}


def test_top_p_sees_the_distribution_before_temperature() -> None:
    # At temperature 5 the four tokens are nearly uniform, so a top_p applied after temperature
    # would keep three of them; llama.cpp applies it before, keeping {0, 1}.
    samples = draw(PLAIN.replace(top_p=0.75, temperature=5.0), LOGITS, 1000)
    assert set(samples) == {0, 1}


def test_top_p_works_after_top_k() -> None:
    # top_k=2 renormalizes to [0.625, 0.375]; top_p=0.6 then keeps only token 0.
    filtered = filter_logits(LOGITS, PLAIN.replace(top_k=2, top_p=0.6))
    assert torch.isfinite(filtered).tolist() == [True, False, False, False]
    # Without top_k, 0.5 < 0.6 and token 1 stays too.
    filtered = filter_logits(LOGITS, PLAIN.replace(top_p=0.6))
    assert torch.isfinite(filtered).tolist() == [True, True, False, False]


# --- min_p -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_p", "kept"),
    [
        (0.0, {0, 1, 2, 3}),
        (0.09, {0, 1, 2, 3}),
        (0.2, {0, 1, 2}),
        (0.5, {0, 1}),
        (0.7, {0}),
        (1.0, {0}),
    ],
)
@pytest.mark.parametrize("top_p", [1.0, 0.99])  # 0.99 keeps all four but takes the sorted path
def test_min_p_drops_tokens_below_the_ratio(min_p: float, kept: set[int], top_p: float) -> None:
    # thresholds are min_p * 0.5; the probabilities are 0.5, 0.3, 0.15, 0.05
    filtered = filter_logits(LOGITS, PLAIN.replace(min_p=min_p, top_p=top_p))
    assert set(torch.isfinite(filtered).nonzero().flatten().tolist()) == kept
    # surviving logits are left untouched
    assert torch.equal(filtered[sorted(kept)], LOGITS[sorted(kept)])


def test_min_p_when_sampling() -> None:
    samples = draw(PLAIN.replace(min_p=0.2, temperature=10.0), LOGITS, 1000)
    assert set(samples) == {0, 1, 2}


def test_default_params_keep_only_plausible_tokens() -> None:
    # top_k 40, top_p 0.95, min_p 0.05 together, as a request gets them by default.
    logits = random_logits(6, vocab_size=1000)
    probs = torch.softmax(logits, dim=-1)
    samples = draw(SamplingParams(seed=3), logits, 300)
    assert all(probs[t] >= 0.05 * probs.max() for t in samples)


# --- penalties -------------------------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.tensor([2.0, -2.0, 0.0, 1.5, -0.5])
    recent = torch.tensor([0, 1, 2, 0, 0])  # token 0 three times: the count does not matter
    out = apply_penalties(logits, recent, SamplingParams(repetition_penalty=2.0))
    assert out.tolist() == [1.0, -4.0, 0.0, 1.5, -0.5]
    assert logits.tolist() == [2.0, -2.0, 0.0, 1.5, -0.5]  # input untouched


def test_presence_and_frequency_penalties_exact_values() -> None:
    logits = torch.tensor([1.0, -1.0, 0.5, 3.0])
    recent = torch.tensor([0, 0, 0, 1, 3, 0])
    params = SamplingParams(presence_penalty=0.25, frequency_penalty=0.5)
    out = apply_penalties(logits, recent, params)
    # token 0: 4 times -> 1 - (4*0.5 + 0.25); token 1, 3: once -> x - 0.75; token 2 unseen
    assert out.tolist() == [1.0 - 2.25, -1.0 - 0.75, 0.5, 3.0 - 0.75]
    # negative penalties raise the logits instead
    negative = params.replace(presence_penalty=-1.0, frequency_penalty=-0.5)
    out = apply_penalties(logits, recent, negative)
    assert out.tolist() == [1.0 + 3.0, -1.0 + 1.5, 0.5, 3.0 + 1.5]


def test_all_three_penalties_combine_in_llama_cpp_order() -> None:
    logits = torch.tensor([3.0, -1.0])
    params = SamplingParams(repetition_penalty=1.5, presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(logits, torch.tensor([0, 0, 1]), params)
    assert out.tolist() == [3.0 / 1.5 - 1.0, -1.0 * 1.5 - 0.75]


def test_penalties_apply_to_greedy_too() -> None:
    logits = torch.tensor([2.0, 1.9, 0.0])
    sampler = Sampler(SamplingParams.greedy(repetition_penalty=1.1))
    assert sampler.sample(logits, []) == 0
    assert sampler.sample(logits, [0]) == 1


def test_penalty_last_n_limits_the_window() -> None:
    logits = torch.tensor([2.0, 1.9, 0.0, 0.0, 0.0, 0.0])
    history = [0, 2, 3, 4]  # token 0 is 4th from the end
    for n, expected in [(3, 0), (4, 1), (64, 1), (-1, 1), (0, 0)]:
        sampler = Sampler(SamplingParams.greedy(repetition_penalty=1.1, penalty_last_n=n))
        assert sampler.sample(logits, history) == expected, f"penalty_last_n={n}"


def test_penalty_window() -> None:
    history = [1, 2, 3, 4, 5]
    assert penalty_window(history, 2).tolist() == [4, 5]
    assert penalty_window(history, 10).tolist() == history
    assert penalty_window(history, -1).tolist() == history
    assert penalty_window(history, 0).tolist() == []
    assert penalty_window(torch.tensor(history, dtype=torch.int32), 3).tolist() == [3, 4, 5]
    assert penalty_window([], 64).dtype == torch.int64


def test_penalties_reject_ids_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="vocabulary"):
        apply_penalties(torch.zeros(4), torch.tensor([4]), SamplingParams(repetition_penalty=1.2))


def slow_penalties(logits: torch.Tensor, recent: list[int], params: SamplingParams) -> torch.Tensor:
    """The llama.cpp loop, one distinct token at a time."""
    out = logits.clone()
    for token, count in Counter(recent).items():
        x = out[token].item()
        x = x / params.repetition_penalty if x > 0 else x * params.repetition_penalty
        x -= count * params.frequency_penalty + params.presence_penalty
        out[token] = x
    return out


@pytest.mark.parametrize("seed", range(10))
def test_vectorized_penalties_equal_the_slow_loop(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    vocab_size = 50
    logits = torch.randn(vocab_size, generator=g) * 4
    n_recent = int(torch.randint(1, 120, (1,), generator=g))
    recent = torch.randint(0, vocab_size, (n_recent,), generator=g)  # many repeats
    u = torch.rand(3, generator=g).tolist()
    params = SamplingParams(
        repetition_penalty=0.5 + 1.5 * u[0],
        presence_penalty=4 * u[1] - 2,
        frequency_penalty=4 * u[2] - 2,
    )
    expected = slow_penalties(logits, recent.tolist(), params)
    assert torch.allclose(apply_penalties(logits, recent, params), expected, rtol=1e-6, atol=1e-6)


# --- top_logprobs ----------------------------------------------------------------------------


def test_top_logprobs_uses_the_raw_logits() -> None:
    logits = random_logits(7)
    result = top_logprobs(logits, 3)
    expected = torch.log_softmax(logits, dim=-1)
    assert [token for token, _ in result] == torch.topk(logits, 3).indices.tolist()
    for token, logprob in result:
        assert logprob == pytest.approx(expected[token].item(), abs=1e-6)
    assert top_logprobs(logits, 0) == []
    assert len(top_logprobs(logits, 1000)) == logits.numel()
    assert top_logprobs(torch.tensor([0.0, 0.0]).half(), 1)[0][1] == pytest.approx(math.log(0.5))


@pytest.mark.parametrize("scale", [0.05, 0.5, 3.0])  # flat to peaked: the cut needs 2,000+ tokens to a few
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
def test_top_p_over_a_large_vocabulary_equals_the_float64_statement(scale: float, top_p: float) -> None:
    """top_p with top_k off sorts only as many tokens as the cut needs (sampler._nucleus); the
    kept set is the smallest prefix of the whole sorted vocabulary reaching top_p."""
    logits = torch.randn(20000, generator=torch.Generator().manual_seed(7)) * scale
    order = torch.argsort(logits.double(), descending=True)
    mass_before = torch.softmax(logits.double()[order], dim=0).cumsum(0) - torch.softmax(logits.double()[order], 0)
    expected = set(order[mass_before < top_p].tolist())
    filtered = filter_logits(logits, PLAIN.replace(top_p=top_p))
    assert set(torch.isfinite(filtered).nonzero().flatten().tolist()) == expected
    assert torch.equal(filtered[list(expected)], logits[list(expected)])


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.8, seed=3),  # top_k 40: llamita's operator where the kernels load
        PLAIN.replace(top_p=0.9, min_p=0.01),  # top_k off: the torch chain
        SamplingParams(temperature=0.8, seed=4, logit_bias=((5, 3.0),)),  # biased, then the operator
    ],
)
def test_a_seed_draws_what_the_inverse_cdf_over_the_filtered_row_draws(params: SamplingParams) -> None:
    """The draw takes the survivors in the order of their ids and picks the first whose running
    sum of weights passes u times their total, u from the request's generator: a seed gives
    the tokens of that statement, in float64, on either path."""
    logits = torch.randn(3000, generator=torch.Generator().manual_seed(11)) * 2
    generator = torch.Generator().manual_seed(params.seed or 0)
    biased = logits.clone()
    for token, bias in params.logit_bias:
        biased[token] += bias
    filtered = filter_logits(biased, params).double()
    kept = torch.isfinite(filtered).nonzero().squeeze(-1)
    weights = torch.exp((filtered[kept] - filtered[kept].max()) / params.temperature)
    running = weights.cumsum(0)
    expected = []
    for _ in range(50):
        u = float(torch.rand((), dtype=torch.float64, generator=generator))
        expected.append(int(kept[int((running > u * running[-1]).nonzero()[0])]))
    assert draw(params, logits, 50) == expected


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.8, seed=7), PLAIN.replace(top_k=300, top_p=0.5)])
def test_llamitas_operator_draws_what_the_torch_chain_draws(
    params: SamplingParams, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the kernels load, a top_k draw runs as one operator (kernels/csrc/sampling.cpp);
    without them the torch chain runs: the same seed gives the same tokens on both."""
    if sampler_module.native_sampling_ops() is None:
        pytest.skip("llamita's kernels do not load here")
    logits = torch.randn(5000, generator=torch.Generator().manual_seed(2)) * 3
    assert Sampler(params).native_chain
    native_tokens = draw(params, logits, 40)
    monkeypatch.setattr(sampler_module, "native_sampling_ops", lambda: None)
    assert not Sampler(params).native_chain
    assert draw(params, logits, 40) == native_tokens


def test_sample_rows_draws_each_row_by_its_own_sampler() -> None:
    """One call for a batch gives each row what its sampler alone would draw."""
    if sampler_module.native_sampling_ops() is None:
        pytest.skip("llamita's kernels do not load here")
    logits = torch.randn(4, 2000, generator=torch.Generator().manual_seed(3)) * 2
    params = [
        SamplingParams(temperature=t, top_k=k, seed=s)
        for t, k, s in ((0.5, 40, 1), (1.5, 5, 2), (0.8, 100, 3), (1.0, 2, 4))
    ]
    together = sampler_module.sample_rows(logits, [Sampler(p) for p in params])
    alone = [Sampler(p).sample(logits[i], []) for i, p in enumerate(params)]
    assert together == alone
    with pytest.raises(ValueError, match="NaN"):
        sampler_module.sample_rows(torch.full((1, 10), math.nan), [Sampler(params[0])])


def test_argmax_rows_is_torch_argmax_ties_and_nan_included() -> None:
    """The engine's greedy rows: the first of equal maxima, as torch.argmax; a row holding NaN
    gets torch.argmax's answer too (the operator declines it)."""
    logits = torch.randint(-5, 5, (6, 3001), generator=torch.Generator().manual_seed(4)).float()
    logits[1, 2000:] = 9.0  # ties, late in the row
    logits[2, 17] = math.nan
    logits[3] = -math.inf
    padded = torch.cat([logits, torch.full((6, 7), 100.0)], dim=1)[:, :3001]  # a row stride
    for rows in (logits, padded, logits.double()):
        assert sampler_module.argmax_rows(rows) == rows.argmax(-1).tolist()
