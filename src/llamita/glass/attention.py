"""Attention weights of the real forward pass: for every layer and head, how much each token
draws from each earlier token (model/attention_maps.py computes them), and the view of one
layer / head / token the CLI and the web page show."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from llamita.api.llm import LLM
from llamita.errors import InvalidParameterError
from llamita.glass.common import find_tokens, pieces, prompt_ids
from llamita.model.transformer import Transformer


def attention_weights(model: Transformer | Any, ids: Sequence[int], adapters: torch.Tensor | None = None) -> np.ndarray:
    """(n_layers, n_heads, S, S) float32: row i of [l, h] is token i's attention over tokens
    0..i in layer l, head h (each row sums to 1), from one forward pass of `model` (a
    Transformer, or a tensor-parallel LeaderModel, which gathers every rank's heads):
    model/attention_maps.py. adapters: (1,) LoRA slot, as for a forward pass."""
    maps = model.attention_maps(torch.tensor([list(ids)], device=model.device), adapters=adapters)
    return maps.cpu().numpy()


def attention_view(
    llm: LLM,
    text: str,
    *,
    raw: bool = False,
    layer: int | None = None,
    head: int | None = None,
    token: str | int = -1,
    to: str | int | None = None,
    top: int = 5,
) -> dict[str, Any]:
    """The attention map to show and what one token attends to.

    layer / head: 0-based; None averages over all layers / heads. matrix: (S, S) nested
    lists for that choice. token: an index or a word (its last token asks: it has read the whole
    word); attends_to: the `top` tokens it draws most from in the matrix. to: an index or a word
    (its tokens' weights are summed); heads_to lists the (layer, head) pairs where `token`
    attends most to it, strongest first, and its average over all heads. weights: the full
    (n_layers, n_heads, S, S) array (numpy; not for JSON).
    """
    ids = prompt_ids(llm, text, raw)
    weights = attention_weights(llm.loaded.model, ids, llm.adapter_rows())
    n_layers, n_heads = weights.shape[:2]
    for name, value, n in (("layer", layer, n_layers), ("head", head, n_heads)):
        if value is not None and not 0 <= value < n:
            raise InvalidParameterError(name, f"must be in 0..{n - 1}, got {value}")
    chosen = weights if layer is None else weights[layer : layer + 1]
    chosen = chosen if head is None else chosen[:, head : head + 1]
    matrix = chosen.mean(axis=(0, 1))  # (S, S)
    labels = pieces(llm.tokenizer, ids)
    query = find_tokens(llm.tokenizer, ids, token)[-1]
    row = matrix[query]
    order = np.argsort(-row, kind="stable")[:top]
    view: dict[str, Any] = {
        "text": text,
        "raw": raw,
        "ids": ids,
        "tokens": labels,
        "layer": layer,
        "head": head,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "matrix": matrix.tolist(),
        "token": {"position": query, "piece": labels[query]},
        "attends_to": [{"position": int(j), "piece": labels[j], "weight": float(row[j])} for j in order],
        "weights": weights,
    }
    if to is not None:
        targets = find_tokens(llm.tokenizer, ids, to)
        per_head = weights[:, :, query, targets].sum(axis=-1)  # (L, H)
        best = np.argsort(-per_head, axis=None, kind="stable")[:top]
        view["to"] = {
            "positions": targets,
            "pieces": [labels[j] for j in targets],
            "mean_weight": float(per_head.mean()),
        }
        view["heads_to"] = [
            {"layer": int(b // n_heads), "head": int(b % n_heads), "weight": float(per_head.flat[b])} for b in best
        ]
    return view
