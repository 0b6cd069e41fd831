"""Log-probabilities of the tokens of a given text (each given the ones before it): what
`/v1/completions` returns with `echo` + `logprobs`, and what evaluation harnesses
(lm-evaluation-harness `local-completions`) use to score multiple-choice answers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llamita.engine.chunked_forward import check_ids, hidden_chunks
from llamita.engine.llm_engine import TokenLogprob, finite_logprob
from llamita.engine.sampler import top_logprobs
from llamita.model.transformer import Transformer


def prompt_logprobs(model: Transformer, ids: Sequence[int], vocab_size: int, top: int = 0) -> list[TokenLogprob | None]:
    """For each position i > 0: log P(ids[i] | ids[:i]) and the `top` most likely tokens there
    (raw distribution, temperature 1). Position 0 has no context: None."""
    check_ids(model, ids, vocab_size, "prompt")
    out: list[TokenLogprob | None] = [None]
    for start, hidden in hidden_chunks(model, ids):
        with torch.inference_mode():
            logits = model.logits(hidden)[:, :vocab_size].float()  # (S, V): predicts start+1..
        logprobs = torch.log_softmax(logits, dim=-1)
        for j in range(logits.shape[0]):
            target = start + j + 1
            if target >= len(ids):
                break
            token = ids[target]
            out.append(
                TokenLogprob(
                    token, finite_logprob(float(logprobs[j, token])), top_logprobs(logits[j], top) if top else []
                )
            )
    return out
