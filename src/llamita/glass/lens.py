"""Logit lens (nostalgebraist, 2020): read each layer's residual stream at the last position
through the final RMSNorm and the output projection, as if the model stopped there."""

from __future__ import annotations

from typing import Any

import torch

from llamita.api.llm import LLM
from llamita.glass.common import piece, prompt_ids


def layer_residuals(llm: LLM, ids: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The residual stream (dim,) at the last position after the embedding (index 0) and after
    each block (index i = block i-1's output), and the model's own final logits (V,), with the
    LLM's LoRA adapter if it has one.

    Hooks record the first block's input and every block's output during the model's real
    forward pass (under tensor parallelism, rank 0's blocks: their outputs are all-reduced)."""
    model = llm.loaded.model
    seen: list[torch.Tensor] = []

    def keep(x: torch.Tensor) -> None:
        seen.append(x[0, -1].detach().to(model.device, copy=True))  # offloaded blocks: their device

    handles = [model.layers[0].register_forward_pre_hook(lambda _m, args: keep(args[0]))]
    handles += [m.register_forward_hook(lambda _m, _args, out: keep(out)) for m in model.layers]
    try:
        with torch.inference_mode():
            logits = model(torch.tensor([ids], device=model.device), adapters=llm.adapter_rows())[0, -1]
    finally:
        for h in handles:
            h.remove()
    return seen, logits


def logit_lens(llm: LLM, prompt: str, *, raw: bool = False, top: int = 1) -> dict[str, Any]:
    """The top token(s) and probabilities predicted from each layer.

    layers: one dict per stage: layer 0 is the token embedding, layer i the output of block i
    (1..n_layers); top lists the `top` most likely tokens with their probability;
    final_token_prob / final_token_rank follow the model's real prediction (the last layer's
    top token) through the layers. prediction: the model's own next token from its logits.
    """
    model, tok = llm.loaded.model, llm.tokenizer
    ids = prompt_ids(llm, prompt, raw)
    residuals, final_logits = layer_residuals(llm, ids)
    vocab = tok.vocab_size
    final_id = int(final_logits[:vocab].argmax())
    layers = []
    with torch.inference_mode():
        # The stages before the last through the norm and the output projection at once:
        # (n_layers, V). The last stage is the model's own output: the same numbers, taken from
        # the real forward pass rather than recomputed in another matmul shape, whose float
        # rounding could differ and even put another token on top than the prediction.
        stages = model.logits(model.norm(torch.stack(residuals[:-1])[None]))[0, :, :vocab]
        stages = torch.cat([stages.float(), final_logits[:vocab].float().to(stages.device)[None]])
        # Softmax in float64: probabilities shown to a reader, exact whatever the CPU's kernels.
        for i, probs in enumerate(torch.softmax(stages.double(), dim=-1).cpu()):
            values, idx = torch.topk(probs, top)
            layers.append(
                {
                    "layer": i,
                    "top": [{"id": int(t), "piece": piece(tok, int(t)), "prob": float(p)} for p, t in zip(values, idx)],
                    "final_token_prob": float(probs[final_id]),
                    "final_token_rank": int((probs > probs[final_id]).sum()) + 1,
                }
            )
    return {
        "prompt": prompt,
        "raw": raw,
        "prompt_tokens": len(ids),
        "n_layers": len(model.layers),
        "prediction": {"id": final_id, "piece": piece(tok, final_id)},
        "layers": layers,
    }
