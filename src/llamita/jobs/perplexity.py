"""Perplexity of a text, measured the way llama.cpp's `llama-perplexity` measures it.

The method (so numbers compare with llama.cpp's, not with other tools'):

- the whole text is tokenized once, with BOS in front when the model's tokenizer adds one;
- the tokens are cut into non-overlapping windows of `n_ctx`; leftover tokens at the end
  are dropped. When the tokenizer adds BOS, the first token of *every* window is replaced by BOS;
- each window is evaluated on its own (nothing carried over from the previous window);
- only the second half is scored, so every scored token has at least n_ctx/2 tokens of
  context: the logits at positions n_ctx/2 .. n_ctx-2 predict the tokens one step later,
  n_ctx/2 - 1 tokens a window;
- NLL is summed in float64; ppl = exp(mean NLL). The ± is the delta-method standard error:
  ppl × sqrt(var(NLL) / (count - 1)), with var the population variance of the per-token NLL.

With `kl_divergence_base`, the scored log-probs are also saved as a base for
kl_divergence.py, which measures another model's divergence from this one over the same windows.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llamita.errors import InvalidParameterError
from llamita.jobs.log_probs_file import LogProbsWriter
from llamita.model.transformer import Transformer
from llamita.tokenizer import Tokenizer

DEFAULT_N_CTX = 512


@dataclass(frozen=True)
class ChunkProgress:
    """Reported after each window: the running estimate over windows 0..index."""

    index: int  # 0-based window just finished
    n_chunks: int
    perplexity: float
    perplexity_stderr: float
    tokens_scored: int


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of a text. NLL values are in nats per token."""

    perplexity: float
    perplexity_stderr: float  # ± one standard error of `perplexity`
    mean_nll: float
    mean_nll_stderr: float
    n_ctx: int
    n_chunks: int  # windows evaluated
    tokens_scored: int  # n_chunks × (n_ctx/2 - 1)
    text_tokens: int  # tokens in the whole text (BOS included when added)
    seconds: float

    def to_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _NLLStats:
    """Running sums of per-token NLL and NLL² in float64 (Python floats)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.total_sq = 0.0
        self.count = 0

    def add(self, nll: torch.Tensor) -> None:
        nll = nll.double()
        self.total += float(nll.sum())
        self.total_sq += float((nll * nll).sum())
        self.count += nll.numel()

    def estimate(self) -> tuple[float, float, float, float]:
        """(ppl, ppl stderr, mean NLL, mean NLL stderr); stderrs are nan until computable."""
        mean = self.total / self.count
        var = self.total_sq / self.count - mean * mean
        se = math.sqrt(var / (self.count - 1)) if var > 0 and self.count > 1 else math.nan
        ppl = math.exp(mean)
        return ppl, se * ppl, mean, se


def check_settings(n_ctx: int, chunks: int | None = None, context_length: int | None = None) -> None:
    """Raise InvalidParameterError for a window size or chunk limit perplexity cannot use.
    `context_length` None skips the check against the model (e.g. before it is loaded)."""
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int):
        raise InvalidParameterError("n_ctx", f"must be an integer, got {n_ctx!r}")
    if n_ctx < 4 or n_ctx % 2:
        # n_ctx = 2 would score n_ctx/2 - 1 = 0 tokens per window.
        raise InvalidParameterError("n_ctx", f"must be an even number of tokens >= 4, got {n_ctx}")
    if context_length is not None and n_ctx > context_length:
        raise InvalidParameterError(
            "n_ctx", f"{n_ctx} tokens is more than the model's context window of {context_length}"
        )
    if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1):
        raise InvalidParameterError("chunks", f"must be a positive integer, got {chunks!r}")


def perplexity_windows(
    tokens: Sequence[int], n_ctx: int, bos_id: int | None, chunks: int | None = None
) -> torch.Tensor:
    """The windows llama.cpp scores: (n_chunks, n_ctx) token ids, the first of each replaced by
    `bos_id` when it is given. Raises InvalidParameterError when not even one window fits."""
    check_settings(n_ctx, chunks)
    n_max = len(tokens) // n_ctx
    if n_max == 0:
        raise InvalidParameterError(
            "text",
            f"it has {len(tokens)} tokens but one window of n_ctx={n_ctx} needs at least "
            f"{n_ctx}: give a longer text or a smaller n_ctx",
        )
    n = n_max if chunks is None else min(chunks, n_max)
    windows = torch.tensor(list(tokens[: n * n_ctx]), dtype=torch.long).view(n, n_ctx)
    if bos_id is not None:
        windows[:, 0] = bos_id
    return windows


@torch.inference_mode()
def window_logits(model: Transformer, window: torch.Tensor) -> torch.Tensor:
    """The logits llama.cpp scores in one window (n_ctx,) of token ids, evaluated from an empty
    context: positions n_ctx/2 .. n_ctx-2, each predicting the token one step later,
    (n_ctx/2 - 1, vocab) float32."""
    n_ctx = window.shape[0]
    device = model.norm.weight.device  # dense in every weight format, unlike embed_tokens
    hidden = model.hidden_states(window.to(device)[None])  # (1, n_ctx, dim)
    # Only the scored positions go through the output projection (the largest matmul of a small
    # model: 49152 x 576 for the default one): half the rows, so that its exact float32 form
    # (model/linear.py HEAD_DENSE_MIN_ROWS) costs what the int8 kernel did on the whole window.
    logits: torch.Tensor = model.logits(hidden[0, n_ctx // 2 : n_ctx - 1])
    return logits


def perplexity(
    model: Transformer,
    tokenizer: Tokenizer,
    text: str,
    *,
    n_ctx: int = DEFAULT_N_CTX,
    chunks: int | None = None,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
    kl_divergence_base: str | os.PathLike[str] | None = None,
) -> PerplexityResult:
    """Perplexity of `text` over windows of `n_ctx` tokens (at most `chunks` windows, None =
    all that fit), as llama.cpp's llama-perplexity computes it. `on_chunk` is called after each
    window with the running estimate. `kl_divergence_base`: also write this model's log-probs at
    every scored position to that file (llama.cpp's format, ~2 × vocab bytes a scored token),
    the base that `kl_divergence.kl_divergence` compares another model against."""
    check_settings(n_ctx, chunks, model.config.context_length)
    if not isinstance(text, str):
        raise InvalidParameterError("text", f"must be a string, got {type(text).__name__}")
    start = time.perf_counter()
    tokens = tokenizer.encode(text, add_bos=tokenizer.add_bos)
    windows = perplexity_windows(tokens, n_ctx, tokenizer.bos_id if tokenizer.add_bos else None, chunks)
    stats = _NLLStats()
    writer = None
    if kl_divergence_base is not None:
        writer = LogProbsWriter(kl_divergence_base, n_ctx, model.config.vocab_size, tokens[: windows.numel()])
    try:
        for i, window in enumerate(windows):
            logits = window_logits(model, window)
            targets = window[n_ctx // 2 + 1 :].to(logits.device)
            stats.add(F.cross_entropy(logits, targets, reduction="none").cpu())
            if writer is not None:
                writer.write(logits)
            if on_chunk is not None:
                ppl, ppl_se, _, _ = stats.estimate()
                on_chunk(ChunkProgress(i, len(windows), ppl, ppl_se, stats.count))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    ppl, ppl_se, mean, se = stats.estimate()
    return PerplexityResult(
        ppl, ppl_se, mean, se, n_ctx, len(windows), stats.count, len(tokens), time.perf_counter() - start
    )


def read_text_file(path: str | os.PathLike[str]) -> str:
    """The file as UTF-8 text exactly as llama-perplexity reads it: bytes decoded as they are
    (CRLF line ends kept), minus one trailing newline."""
    path = Path(path)
    if not path.exists():
        raise InvalidParameterError("file", f"text file not found: {path}")
    if path.is_dir():
        raise InvalidParameterError("file", f"{path} is a folder, not a text file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidParameterError("file", f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    return text[:-1] if text.endswith("\n") else text
