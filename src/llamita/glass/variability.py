"""The temperature exercise: several samples of the same prompt per temperature, and how much
they differ (distinct n-grams, pairwise token overlap)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from llamita.api.llm import LLM
from llamita.errors import InvalidParameterError
from llamita.glass.common import prompt_ids
from llamita.sampling_params import SamplingParams


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams over all n-grams, pooled over the samples (Li et al., 2016): 1 = no
    n-gram repeats anywhere, near 0 = the samples repeat each other. 0 when there are none."""
    grams = [tuple(s[i : i + n]) for s in samples for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """|A ∩ B| / |A ∪ B| of the two samples' token sets (1 for two empty samples)."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def variability(samples: Sequence[Sequence[int]]) -> dict[str, float | None]:
    """distinct_1, distinct_2, and mean_jaccard: the mean token-set overlap over all pairs of
    samples (1 = every sample uses the same tokens; None with fewer than two samples)."""
    pairs = list(itertools.combinations(samples, 2))
    return {
        "distinct_1": distinct_n(samples, 1),
        "distinct_2": distinct_n(samples, 2),
        "mean_jaccard": sum(jaccard(a, b) for a, b in pairs) / len(pairs) if pairs else None,
    }


def sample_view(
    llm: LLM,
    prompt: str,
    *,
    temperatures: Sequence[float] = (0.1, 1.5),
    n: int = 5,
    seed: int | None = None,
    max_tokens: int = 40,
    raw: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
) -> dict[str, Any]:
    """`n` samples of `prompt` at each temperature, generated together as one batch.

    Filters are off by default so the temperature alone shapes the draw. With `seed`, sample j
    (counting over all temperatures) uses seed + j: the whole view repeats. runs: per
    temperature its samples (text, tokens) and `variability` of their token ids.
    """
    if n < 1:
        raise InvalidParameterError("n", f"must be >= 1, got {n}")
    if not temperatures:
        raise InvalidParameterError("temperature", "give at least one temperature")
    ids = prompt_ids(llm, prompt, raw)
    params = [
        SamplingParams(
            temperature=t,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            max_tokens=max_tokens,
            seed=None if seed is None else seed + j,
        )
        for j, t in enumerate(t for t in temperatures for _ in range(n))
    ]
    outputs = llm.generate(prompt_token_ids=[ids] * len(params), params=params)
    runs = []
    for i, t in enumerate(temperatures):
        outs = outputs[i * n : (i + 1) * n]
        samples = [
            {"text": o.text, "n_tokens": len(o.token_ids), "token_ids": o.token_ids, "finish_reason": o.finish_reason}
            for o in outs
        ]
        runs.append({"temperature": t, "samples": samples, **variability([o.token_ids for o in outs])})
    return {"prompt": prompt, "raw": raw, "n": n, "seed": seed, "max_tokens": max_tokens, "runs": runs}
