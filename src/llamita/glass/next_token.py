"""The next-token distribution after a prompt: at several temperatures, and after the sampler's
top_k / top_p / min_p filters, with the entropy of each."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from llamita.api.llm import LLM
from llamita.engine.sampler import filter_logits
from llamita.errors import InvalidParameterError
from llamita.glass.common import piece, prompt_ids
from llamita.sampling_params import SamplingParams
from llamita.tokenizer.tokenizer import Tokenizer


def last_logits(llm: LLM, ids: Sequence[int]) -> torch.Tensor:
    """Float32 logits (V,) for the token after `ids` (rows past the tokenizer's vocabulary cut),
    with the LLM's LoRA adapter if it has one."""
    model = llm.loaded.model
    with torch.inference_mode():
        logits: torch.Tensor = model(
            torch.tensor([list(ids)], device=model.device), last_only=True, adapters=llm.adapter_rows()
        )[0, -1]
    return logits.float().cpu()[: llm.tokenizer.vocab_size]


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) over (V,) in float64; T = 0 is greedy: all the mass on the argmax.
    Tokens at -inf (filtered out) get probability 0.

    Float64 because these are numbers shown to a reader: a float32 softmax over a 50k-128k
    vocabulary is off by ~1e-5 in its largest probabilities (the sum's and exp's rounding,
    which differs between AVX2 and AVX-512 kernels); in float64 the shown value is the exact
    softmax of the model's logits, whatever the CPU."""
    if temperature < 0 or not math.isfinite(temperature):
        raise InvalidParameterError("temperature", f"must be >= 0, got {temperature}")
    logits = logits.double()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(0, logits.argmax().reshape(1), 1.0)
    return torch.softmax((logits - logits.max()) / temperature, dim=-1)


def entropy_nats(probs: torch.Tensor) -> float:
    """-sum p ln p, with 0 ln 0 = 0."""
    p = probs[probs > 0]
    return float(-(p * p.log()).sum())


def next_token_view_from_logits(
    tokenizer: Tokenizer,
    logits: torch.Tensor,
    *,
    temperatures: Sequence[float] = (1.0,),
    top: int = 10,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> dict[str, Any]:
    """The view for one row of logits (V,).

    tokens: the `top` most likely tokens, most likely first (the order is the same at every
    temperature: dividing by T keeps it). distributions: one per temperature, and with any
    filter set one more per temperature after the filters, applied as the sampler applies them
    (llama.cpp's order: top_k -> top_p -> min_p at temperature 1, then the temperature). Each
    has probs (aligned with tokens), entropy in nats and bits over the whole vocabulary,
    candidates (tokens with probability > 0) and top_mass (the shown tokens' total).
    """
    if top < 1:
        raise InvalidParameterError("top", f"must be >= 1, got {top}")
    logits = logits.float().reshape(-1)
    values, ids = torch.topk(logits, min(top, logits.numel()))
    tokens = [
        {"rank": r + 1, "id": int(i), "piece": piece(tokenizer, int(i)), "logit": float(v)}
        for r, (v, i) in enumerate(zip(values, ids))
    ]
    params = SamplingParams(top_k=top_k or 0, top_p=1.0 if top_p is None else top_p, min_p=min_p or 0.0)
    filters = {"top_k": params.top_k, "top_p": params.top_p, "min_p": params.min_p}
    filtered = None
    if top_k or top_p is not None or min_p:
        filtered = filter_logits(logits, params)
    distributions = []
    for source, is_filtered in ((logits, False), (filtered, True)):
        if source is None:
            continue
        for t in temperatures:
            p = probabilities(source, t)
            h = entropy_nats(p)
            shown = p[ids]
            distributions.append(
                {
                    "temperature": t,
                    "filtered": is_filtered,
                    "probs": shown.tolist(),
                    "entropy_nats": h,
                    "entropy_bits": h / math.log(2),
                    "candidates": int((p > 0).sum()),
                    "top_mass": float(shown.sum()),
                }
            )
    return {"tokens": tokens, "distributions": distributions, "filter": filters if filtered is not None else None}


def next_token_view(
    llm: LLM,
    prompt: str,
    *,
    raw: bool = False,
    temperatures: Sequence[float] = (1.0,),
    top: int = 10,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> dict[str, Any]:
    """What the model would write next after `prompt` (as a chat question, or with `raw` as
    plain text to continue); see `next_token_view_from_logits` for the fields."""
    ids = prompt_ids(llm, prompt, raw)
    view = next_token_view_from_logits(
        llm.tokenizer, last_logits(llm, ids), temperatures=temperatures, top=top, top_k=top_k, top_p=top_p, min_p=min_p
    )
    return {"prompt": prompt, "raw": raw, "prompt_tokens": len(ids), **view}
