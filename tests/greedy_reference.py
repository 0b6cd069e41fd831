"""Greedy continuation computed the slow, obviously correct way: every step runs the whole
sequence through `model.forward` with no KV cache and takes the argmax of the last position.
The reference the engine (paged cache, chunked prefill, batching, compiled step) is held to."""

from __future__ import annotations

import torch


def greedy_tokens(model, ids: list[int], n: int, n_tokens: int | None = None) -> list[int]:  # noqa: ANN001
    """`n` greedy tokens after `ids`; only the first `n_tokens` ids are candidates (a padded
    vocabulary's extra rows never are)."""
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([ids + out], device=model.device))[0, -1]
            out.append(int(logits[:n_tokens].argmax()))
    return out
