"""Where the quantized path's KL divergence comes from: swap parts of the compact model for the
same parts loaded dense (in the same dtype) and measure again, against one float32 base.

Variants (each over the first --chunks windows of the base):
  compact            the default path as loaded (compact weights, llamita's kernels);
  dense-embedding    compact blocks, the token embedding (and, tied, the output head) dense;
  dense-blocks       dense blocks, the compact token embedding / output head;
  dense              everything dense in the same dtype (the dtype's own rounding alone);
with --pieces R, also the first two fed R tokens at a time through a KV cache ("...-in-pieces"):
below 128 rows llamita's kernels run every matmul with int8 activations, as decode steps do,
where a 512-token window natively runs dense bfloat16 matmuls (model/linear.py).

    python benchmarks/kl_attribution.py --base base.kld --model MODEL.gguf --chunks 4
    LLAMITA_ISA=avx2 python benchmarks/kl_attribution.py --base base.kld --chunks 4

The base comes from `llamita perplexity TEXT --dtype float32 --kl-divergence-base base.kld`
(benchmarks/kl_divergence.py writes one). Prints one JSON object: {"config", "variants":
{name: {mean_kld, mean_kld_stderr, same_top_p, perplexity}}}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import torch

from llamita.engine.chunked_forward import hidden_chunks
from llamita.engine.loader import kernel_summary, load_model
from llamita.jobs.kl_divergence import kl_divergence


class InPieces:
    """`model` fed `rows` tokens at a time through a KV cache; called as the model is, on (1, S)."""

    def __init__(self, model: torch.nn.Module, rows: int) -> None:
        self.model, self.rows = model, rows
        self.config, self.norm = model.config, model.norm

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        parts = hidden_chunks(self.model, ids[0].tolist(), self.rows)
        return torch.cat([self.model.logits(h[None])[0] for _, h in parts])[None]  # (1, S, vocab)


def with_parts(target: torch.nn.Module, source: torch.nn.Module, embedding: bool) -> torch.nn.Module:
    """A shallow copy of `target` with `source`'s token embedding and output head (embedding=True)
    or with `source`'s blocks (embedding=False)."""
    model = copy.copy(target)
    model._modules = dict(target._modules)  # noqa: SLF001 - swap children without touching `target`
    names = ("embed_tokens", "lm_head") if embedding else ("layers",)
    for name in names:
        setattr(model, name, getattr(source, name, None))  # a dense tied model has lm_head None
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="base log-probs file (float32)")
    parser.add_argument("--model", type=Path, help="quantized GGUF (default: the default model)")
    parser.add_argument("--chunks", type=int, default=4, help="windows to score (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--pieces", type=int, default=0, help="also feed this many tokens at a time (0: no)")
    parser.add_argument("--only", nargs="*", help="run only these variants (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    compact = load_model(args.model)
    dense = load_model(args.model, dtype=compact.dtype, compact=False)
    models = {
        "compact": compact.model,
        "dense-embedding": with_parts(compact.model, dense.model, embedding=True),
        "dense-blocks": with_parts(compact.model, dense.model, embedding=False),
        "dense": dense.model,
    }
    if args.pieces:
        models["compact-in-pieces"] = InPieces(compact.model, args.pieces)
        models["dense-embedding-in-pieces"] = InPieces(models["dense-embedding"], args.pieces)
    out = {}
    for name, model in models.items():
        if args.only and name not in args.only:
            continue
        r = kl_divergence(model, compact.tokenizer, args.base, chunks=args.chunks)
        out[name] = {k: getattr(r, k) for k in ("mean_kld", "mean_kld_stderr", "same_top_p", "perplexity")}
    config = {
        "model": str(compact.path),
        "dtype": str(compact.dtype).removeprefix("torch."),
        "kernels": kernel_summary(),
        "isa": os.environ.get("LLAMITA_ISA", "native"),
        "chunks": args.chunks,
        "pieces": args.pieces,
        "tokens_scored": r.tokens_scored,
        "load_average": os.getloadavg(),
    }
    print(json.dumps({"config": config, "variants": out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
