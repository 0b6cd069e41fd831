"""Turn one row of logits into the next token id, following llama.cpp's default sampler chain.

The chain is: logit_bias -> penalties -> top_k -> top_p -> min_p -> temperature -> draw. As in llama.cpp,
temperature comes *last*: top_k, top_p and min_p see the distribution at temperature 1, so
a high temperature flattens the surviving tokens but never lets more tokens survive. (vLLM
and Hugging Face divide by the temperature first; the same top_p then keeps a different set.)

Everything here works on a single row of V logits; the functions are pure and the only state
is the `Sampler`'s random generator. `sample_rows` draws for many rows at once through
llamita's operator (kernels/csrc/sampling.cpp), the same chain in one pass where top_k is on.

The draw: the surviving tokens in the order of their ids, weighted by exp((logit - best) / T),
and the first one whose running sum passes u times their total, with u uniform in [0, 1) from
the request's generator; so a seed gives the same tokens on either path.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from llamita.kernels import native
from llamita.kernels.native import KernelOps
from llamita.sampling_params import SamplingParams

# top_k up to this goes through llamita's operator, which keeps the k best in a heap: ~10 us a
# row of 49,152 logits at k = 40 against ~100 us for the torch chain (torch.topk and a dozen
# small operators); a larger k is a partial sort, torch.topk's job.
NATIVE_TOP_K_MAX = 1024


def penalty_window(history: list[int] | Tensor, penalty_last_n: int, device: torch.device | str = "cpu") -> Tensor:
    """The tokens the penalties look at: the last `penalty_last_n` of `history`.

    `history` holds every token id so far, prompt included. 0 gives an empty window, -1 the
    whole history. Returns an int64 tensor of shape (n,) on `device`.
    """
    if penalty_last_n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    window = history if penalty_last_n < 0 else history[-penalty_last_n:]
    return torch.as_tensor(window, dtype=torch.int64, device=device).reshape(-1)


def apply_penalties(logits: Tensor, recent_tokens: Tensor, params: SamplingParams) -> Tensor:
    """Penalize the tokens of the penalty window, with llama.cpp's formula.

    For each distinct token t that occurs c > 0 times in `recent_tokens`:
        logit[t] = logit[t] / repetition_penalty   if logit[t] > 0
                   logit[t] * repetition_penalty   otherwise
        logit[t] -= c * frequency_penalty + presence_penalty

    logits: (V,) float32. recent_tokens: (n,) int64 ids in [0, V). Returns a new (V,) tensor,
    or `logits` itself when no penalty is active; never modifies `logits` in place.
    """
    rp, fp, pp = params.repetition_penalty, params.frequency_penalty, params.presence_penalty
    if recent_tokens.numel() == 0 or (rp == 1.0 and fp == 0.0 and pp == 0.0):
        return logits
    vocab_size = logits.shape[-1]
    if bool(recent_tokens.min() < 0) or bool(recent_tokens.max() >= vocab_size):
        raise ValueError(f"penalty window holds token ids outside the vocabulary [0, {vocab_size})")
    counts = torch.bincount(recent_tokens, minlength=vocab_size).to(logits.dtype)  # (V,)
    seen = counts > 0
    penalized = torch.where(logits > 0, logits / rp, logits * rp)
    penalized = penalized - (counts * fp + seen.to(logits.dtype) * pp)
    return torch.where(seen, penalized, logits)


def filter_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Apply top_k, then top_p, then min_p, all at temperature 1 (llama.cpp's order).

    logits: (V,) float32. Returns a new (V,) tensor where the dropped tokens are -inf; the most
    likely token always survives.
    """
    values, ids = kept_tokens(logits, params)
    return values if ids is None else torch.full_like(logits, -math.inf).scatter_(0, ids, values)


def kept_tokens(logits: Tensor, params: SamplingParams) -> tuple[Tensor, Tensor | None]:
    """What `filter_logits` keeps, as (values, ids) of the candidates it looked at, the dropped
    ones among them -inf; ids None: values is the whole row. Sampling draws from these without
    building a (V,) row again."""
    vocab_size = logits.shape[-1]
    top_k = params.top_k if 0 < params.top_k < vocab_size else 0
    if top_k == 0 and params.top_p >= 1.0:
        # Nothing needs sorting: min_p only compares each token with the most likely one.
        return _min_p(logits, params.min_p), None
    if top_k:  # (k,) candidates in descending order of logit
        values, ids = torch.topk(logits, top_k)
        if params.top_p < 1.0:
            values = _top_p(values, params.top_p)
    else:
        values, ids = _nucleus(logits, params.top_p)
    return _min_p(values, params.min_p), ids


def _top_p(sorted_logits: Tensor, top_p: float) -> Tensor:
    # Keep the smallest prefix whose probability reaches top_p: token i stays while the mass
    # of the tokens before it is still < top_p. The first token always stays (top_p > 0).
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)  # (n,)
    return _cut(sorted_logits, cumulative, top_p)


def _nucleus(logits: Tensor, top_p: float) -> tuple[Tensor, Tensor]:
    """top_p over the whole vocabulary (top_k off), sorting only as many of the most likely
    tokens as the cut needs: 256 first, 8x more while their mass is short of top_p. Sorting all
    49,152 logits of a small model's vocabulary took 4.3 ms a token; the cut is the same, as
    each token's probability is taken against the whole vocabulary's sum."""
    vocab_size = logits.shape[-1]
    top = logits.max()
    total = torch.exp(logits - top).sum()  # softmax's own steps: the same cut at a tie
    n = min(256, vocab_size)
    while True:
        values, ids = torch.topk(logits, n)  # sorted, descending
        cumulative = (torch.exp(values - top) / total).cumsum(dim=-1)
        if n == vocab_size or bool(cumulative[-1] >= top_p):
            return _cut(values, cumulative, top_p), ids
        n = min(vocab_size, 8 * n)


def _cut(sorted_logits: Tensor, cumulative: Tensor, top_p: float) -> Tensor:
    drop = torch.zeros_like(cumulative, dtype=torch.bool)
    drop[1:] = cumulative[:-1] >= top_p
    return sorted_logits.masked_fill(drop, -math.inf)


def _min_p(logits: Tensor, min_p: float) -> Tensor:
    # p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p); no softmax needed.
    if min_p <= 0.0:
        return logits
    threshold = logits.max() + math.log(min_p)
    return logits.masked_fill(logits < threshold, -math.inf)


def top_logprobs(logits: Tensor, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens and their log-probabilities, most likely first.

    Computed from the raw logits (log_softmax at temperature 1, before any penalty or filter),
    as OpenAI's `top_logprobs` reports them. logits: (V,) of any float dtype.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    logprobs = torch.log_softmax(logits.float().reshape(-1), dim=-1)
    values, ids = torch.topk(logprobs, min(k, logprobs.numel()))
    return list(zip(ids.tolist(), values.tolist()))


class Sampler:
    """Picks the next token of one request; owns that request's random generator.

    With `params.seed` set, the same logits and history give the same tokens on every run
    (on the same device and torch version); without it, the generator is seeded from the OS.
    """

    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu") -> None:
        self.params = params
        self.device = torch.device(device)
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        ids, values = zip(*params.logit_bias) if params.logit_bias else ((), ())
        self.bias_ids = torch.tensor(ids, dtype=torch.int64, device=self.device)
        self.bias_values = torch.tensor(values, dtype=torch.float32, device=self.device)

    @property
    def plain_greedy(self) -> bool:
        """Whether `sample` is the argmax of the logits as given (greedy, no bias, no
        penalty), so a batch's rows can share one argmax."""
        p = self.params
        active = self.bias_ids.numel() or p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty
        return p.is_greedy and not active

    def sample(self, logits: Tensor, history: list[int] | Tensor) -> int:
        """The next token id.

        logits: (V,) of any float dtype, for the position being generated (upcast to float32).
        history: every token id so far, prompt and generated; the penalties look at its last
        `penalty_last_n` entries.
        """
        if logits.dim() != 1:
            shape = tuple(logits.shape)
            raise ValueError(f"sample() takes one row of logits of shape (V,), got {shape}")
        params = self.params
        logits = logits.to(device=self.device, dtype=torch.float32)
        if self.bias_ids.numel():  # first in the chain, as OpenAI and llama.cpp apply it
            logits = logits.index_add(0, self.bias_ids, self.bias_values)
        if params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
            # (built only then: a tensor of the history every step is a cost at 250 tokens/s)
            logits = apply_penalties(logits, penalty_window(history, params.penalty_last_n, self.device), params)
        if params.is_greedy:
            return int(torch.argmax(logits))
        if self.native_draw:
            return sample_rows(logits.reshape(1, -1), [self])[0]
        values, ids = kept_tokens(logits, params)
        # Draw among the survivors only: after top-k/top-p/min-p that is usually tens of
        # tokens, and multinomial over the whole vocabulary costs ~2 ms a token on a CPU. They
        # are taken in the order of their ids, so a seed draws the same token as over the row.
        kept = torch.isfinite(values).nonzero().squeeze(-1)  # (n,)
        kept_logits = values[kept]
        if ids is not None:  # candidates in order of likelihood
            kept, order = torch.sort(ids[kept])
            kept_logits = kept_logits[order]
        # Subtract the max before dividing so a tiny temperature cannot overflow to inf.
        weights = torch.exp((kept_logits.double() - kept_logits.max()) / params.temperature)
        running = weights.cumsum(dim=-1)
        if not bool(torch.isfinite(running[-1])):
            raise ValueError("cannot sample: the logits hold NaN or no finite value")
        at = int(torch.searchsorted(running, self.uniform() * running[-1], right=True))
        return int(kept[min(at, kept.numel() - 1)])

    def uniform(self) -> float:
        """The next draw's u, uniform in [0, 1), from this request's generator."""
        return float(torch.rand((), dtype=torch.float64, generator=self.generator, device=self.device))

    @property
    def native_draw(self) -> bool:
        """Whether the chain after bias and penalties runs as llamita's one operator
        (`sample_rows`): a draw (temperature > 0) with 0 < top_k <= NATIVE_TOP_K_MAX, on the
        CPU, where the kernels load."""
        p = self.params
        return (
            not p.is_greedy
            and 0 < p.top_k <= NATIVE_TOP_K_MAX
            and self.device.type == "cpu"
            and native_sampling_ops() is not None
        )

    @property
    def native_chain(self) -> bool:
        """Whether `sample` is `sample_rows` over the logits as given (`native_draw`, and no
        bias or penalty), so a batch's rows can share one call."""
        p = self.params
        adjusted = self.bias_ids.numel() or p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty
        return not adjusted and self.native_draw


def native_sampling_ops() -> KernelOps | None:
    """llamita's operators with `sample_top_k`, or None (no level loads)."""
    return native.kernel_ops() if native.kernel_level() is not None else None


def argmax_rows(logits: Tensor) -> list[int]:
    """Each row's most likely token id (the first of equal ones, as torch.argmax): llamita's
    operator at top_k 1 on the CPU (~10 against ~27 us a row of 49,152 logits: a pass over
    block maxima, then one block), torch.argmax elsewhere and for a row holding NaN."""
    ops = native_sampling_ops() if logits.device.type == "cpu" else None
    if ops is None:
        return list(logits.argmax(-1).tolist())
    if logits.dtype != torch.float32 or logits.stride(-1) != 1:
        logits = logits.float().contiguous()
    rows = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]], dtype=torch.float64).expand(logits.shape[0], 5).contiguous()
    ids: list[int] = ops.sample_top_k(logits, rows).tolist()
    return [i if i >= 0 else int(logits[b].argmax()) for b, i in enumerate(ids)]


def sample_rows(logits: Tensor, samplers: list[Sampler]) -> list[int]:
    """Each row's next token by its own sampler, in one call of llamita's `sample_top_k`.

    logits: (B, V) on the CPU, one row per sampler, each with `native_draw` True; the chain
    starts at top_k, so any bias or penalty is in the logits already (`native_chain`: none).
    Raises ValueError for a row whose logits hold NaN or no finite value (as the torch chain
    cannot draw from those either)."""
    ops = native_sampling_ops()
    assert ops is not None, "sample_rows needs llamita's kernels (Sampler.native_chain)"
    if logits.dtype != torch.float32 or logits.stride(-1) != 1:
        logits = logits.float().contiguous()
    rows = [(s.params.top_k, s.params.top_p, s.params.min_p, s.params.temperature, s.uniform()) for s in samplers]
    ids: list[int] = ops.sample_top_k(logits, torch.tensor(rows, dtype=torch.float64)).tolist()
    if min(ids) < 0:
        raise ValueError("cannot sample: the logits hold NaN or no finite value")
    return ids
