"""Attention weights of the real forward pass, materialized: for every layer and head,
softmax(QKᵀ/√d + causal mask) from the queries and keys the model computed (after RoPE; with
grouped-query attention each query head reads its KV head). The forward pass itself never
forms these (it calls scaled_dot_product_attention); the glass box shows them
(glass/attention.py), and a tensor-parallel rank computes those of its own heads
(engine/tensor_parallel.py gathers them)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from llamita.model.attention_inputs import AttentionInputs

if TYPE_CHECKING:
    from llamita.model.transformer import Attention, Transformer


def scores_to_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal attention weights (H, S, S), float32, from q (S, H, hd) and k (S, n_kv, hd).

    Query head h reads KV head h // (H / n_kv), the grouping scaled_dot_product_attention's
    enable_gqa and transformers' repeat_kv use."""
    seqlen, n_heads, head_dim = q.shape
    k = k.repeat_interleave(n_heads // k.shape[1], dim=1)  # (S, H, hd)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) / math.sqrt(head_dim)
    future = torch.ones(seqlen, seqlen, dtype=torch.bool, device=q.device).triu(1)
    return torch.softmax(scores.masked_fill(future, -math.inf), dim=-1)


def check_one_sequence(tokens: torch.Tensor) -> None:
    """Attention maps are of one sequence: tokens (1, S)."""
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"attention maps are of one sequence: tokens (1, S), got {tuple(tokens.shape)}")


def attention_maps(
    model: Transformer, tokens: torch.Tensor, adapters: torch.Tensor | None = None, rows: slice | None = None
) -> torch.Tensor:
    """(n_layers, n_heads, S, S) float32 for `tokens` (1, S), on the model's device: row i of
    [l, h] is token i's attention over tokens 0..i in layer l, head h (each row sums to 1).
    One forward pass without a cache (with LoRA slot `adapters` (1,), as `forward` takes it);
    hooks read each layer's attention input and project it with the layer's own q/k weights
    (and adapter) and RoPE. rows: keep only these query rows, (n_layers, n_heads, R, S), so a
    long prompt's maps need not all be held at once."""
    check_one_sequence(tokens)
    found: dict[int, torch.Tensor] = {}

    def record(module: Attention, args: tuple[torch.Tensor, AttentionInputs]) -> None:
        x, step = args
        q, k, _ = module.project_qkv(x, step.cos, step.sin)
        weights = scores_to_weights(q[0], k[0])
        found[module.layer] = (weights if rows is None else weights[:, rows].clone()).to(tokens.device)

    handles = [block.self_attn.register_forward_pre_hook(record) for block in model.blocks()]
    try:
        with torch.inference_mode():
            model.hidden_states(tokens, adapters=adapters)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([found[i] for i in range(len(model.layers))])
