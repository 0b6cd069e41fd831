"""Where the quantized path's KL divergence comes from: swap parts of the compact model for the
same parts loaded dense (in the same dtype) and measure again, against one float32 base.

Variants (each over the first --chunks windows of the base):
  compact            the default path as loaded (compact weights, llamita's kernels);
  compact-head-kernel  the same with the output head on the int8 kernel at every row count (where
                     prefill runs the kernels, AVX2 / AVX-VNNI: the path before the head expanded
                     its weight from HEAD_DENSE_MIN_ROWS rows, model/linear.py);
  compact-dense-matmuls  the compact weights, every matmul dense over their exact expansion in
                     the model's dtype: no int8 rounding of activations anywhere, so what is
                     left over `dense` is the compact weights' own rounding (the 4-bit blocks'
                     bfloat16 scale and zero);
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
import sys
from pathlib import Path
from unittest import mock

import torch

from llamita.engine.chunked_forward import hidden_chunks
from llamita.engine.loader import kernel_summary, load_model
from llamita.jobs.kl_divergence import kl_divergence
from llamita.model import linear


class InPieces:
    """`model` fed `rows` tokens at a time through a KV cache (`hidden_states` and `logits` as
    the model's, on one sequence)."""

    def __init__(self, model: torch.nn.Module, rows: int) -> None:
        self.model, self.rows = model, rows
        self.config, self.norm = model.config, model.norm

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        parts = hidden_chunks(self.model, ids[0].tolist(), self.rows)
        return torch.cat([h for _, h in parts])[None]  # (1, S, dim)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output projection of `rows` hidden states at a time, as decode steps run it."""
        return torch.cat([self.model.logits(h) for h in hidden.split(self.rows, dim=-2)], dim=-2)


class Patched:
    """`model` run with `linear.<name>` set to `value` during each call (`hidden_states` and
    `logits` as the model's)."""

    def __init__(self, model: torch.nn.Module, name: str, value: object) -> None:
        self.model, self.name, self.value = model, name, value
        self.config, self.norm = model.config, model.norm

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        with mock.patch.object(linear, self.name, self.value):
            out: torch.Tensor = self.model.hidden_states(ids)
        return out

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        with mock.patch.object(linear, self.name, self.value):
            out: torch.Tensor = self.model.logits(hidden)
        return out


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
        "compact-head-kernel": Patched(compact.model, "HEAD_DENSE_MIN_ROWS", sys.maxsize),
        "compact-dense-matmuls": Patched(compact.model, "dense_min_rows", lambda head=False: 1),
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
