"""KL divergence of a model's next-token distributions from a base model's over a text, measured
as llama.cpp's `llama-perplexity --kl-divergence` measures it, so the numbers compare.

The base (e.g. the same weights in float32) is run first with `perplexity(...,
kl_divergence_base=FILE)`: its log-probabilities at every scored position go to FILE
(log_probs_file.py, llama.cpp's format, so either program can read the other's). This module
then runs the model under test on the same tokens and windows and, per scored position t:

- KLD_t = Σ_i p_base(i) (log p_base(i) - log q(i)), over the tokens whose base log-prob is
  above -16 (llama.cpp drops the rest; they add < e^-16 each), with the base read back from its
  16-bit form and q from the model's float32 logits (log-softmax in float64);
- the NLL of the text's next token under both, whether both put the same token on top, and
  Δp = q(next) - p_base(next).

Means come with the standard error sqrt(var / (count - 1)) (var: population variance), the
KLD's percentiles interpolate linearly between sorted values, as llama.cpp's do.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llamita.errors import InvalidParameterError
from llamita.jobs.log_probs_file import LOG_PROB_RANGE, dequantize_log_probs, read_chunks, read_header
from llamita.jobs.perplexity import check_settings, perplexity_windows, window_logits
from llamita.model.transformer import Transformer
from llamita.tokenizer import Tokenizer

# llama.cpp's summary: (field, fraction) for the KLD percentiles it prints.
KLD_PERCENTILES = (
    ("kld_max", 1.0),
    ("kld_p99_9", 0.999),
    ("kld_p99", 0.99),
    ("kld_p95", 0.95),
    ("kld_p90", 0.90),
    ("kld_median", 0.5),
    ("kld_p10", 0.10),
    ("kld_p5", 0.05),
    ("kld_p1", 0.01),
    ("kld_p0_1", 0.001),
    ("kld_min", 0.0),
)
_ROWS_AT_ONCE = 64  # bounds the float64 temporaries to ~64 × n_vocab × 8 bytes each


@dataclass(frozen=True)
class KLDivergenceProgress:
    """Reported after each window: running estimates over windows 0..index."""

    index: int
    n_chunks: int
    perplexity: float
    mean_kld: float
    mean_kld_stderr: float
    same_top_p: float  # fraction, 0..1


@dataclass(frozen=True)
class KLDivergenceResult:
    """The model under test (Q) against the base. KLD and NLL in nats per token; Δp and
    same_top_p as fractions (0..1). Standard errors are nan where not computable."""

    mean_kld: float
    mean_kld_stderr: float
    kld_max: float
    kld_p99_9: float
    kld_p99: float
    kld_p95: float
    kld_p90: float
    kld_median: float
    kld_p10: float
    kld_p5: float
    kld_p1: float
    kld_p0_1: float
    kld_min: float
    perplexity: float  # PPL(Q)
    perplexity_stderr: float
    perplexity_base: float
    perplexity_base_stderr: float
    log_ppl_ratio: float  # ln(PPL(Q) / PPL(base))
    log_ppl_ratio_stderr: float
    mean_p_diff: float
    mean_p_diff_stderr: float
    rms_p_diff: float
    rms_p_diff_stderr: float
    max_abs_p_diff: float
    same_top_p: float
    same_top_p_stderr: float
    n_ctx: int
    n_chunks: int
    tokens_scored: int
    seconds: float

    def to_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class TokenKL:
    """Per scored position, float64: KL(base || Q), NLL under Q and base, Δp, same top token."""

    kld: torch.Tensor  # (n,)
    nll: torch.Tensor
    nll_base: torch.Tensor
    p_diff: torch.Tensor
    same_top: torch.Tensor  # (n,) bool


def token_kl(logits: torch.Tensor, base_log_probs: torch.Tensor, targets: torch.Tensor) -> TokenKL:
    """The per-position quantities from the model's logits (n, vocab), the base's log-probs
    (n, vocab; as read back from the file) and the tokens that follow (n,)."""
    out: list[list[torch.Tensor]] = [[], [], [], [], []]
    for start in range(0, logits.shape[0], _ROWS_AT_ONCE):
        rows = slice(start, start + _ROWS_AT_ONCE)
        log_q = torch.log_softmax(logits[rows].double(), dim=-1)
        log_p = base_log_probs[rows].double()
        kept = log_p > -LOG_PROB_RANGE
        kld = torch.where(kept, log_p.exp() * (log_p - log_q), 0.0).sum(dim=-1)
        tgt = targets[rows, None].to(log_q.device)
        nll, nll_base = -log_q.gather(-1, tgt)[:, 0], -log_p.gather(-1, tgt)[:, 0]
        p_diff = torch.exp(-nll) - torch.exp(-nll_base)
        # argmax takes the first of equal values, as llama.cpp's strict `>` scans do.
        same_top = logits[rows].argmax(dim=-1) == base_log_probs[rows].argmax(dim=-1)
        for acc, value in zip(out, (kld, nll, nll_base, p_diff, same_top), strict=True):
            acc.append(value.cpu())
    kld, nll, nll_base, p_diff, same_top = (torch.cat(v) for v in out)
    return TokenKL(kld, nll, nll_base, p_diff, same_top)


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean and sqrt(population variance / (count - 1)), as llama.cpp's mean_and_uncertainty
    (nan where a standard error cannot be computed)."""
    n = values.numel()
    mean = float(values.mean())
    var = float((values * values).mean()) - mean * mean
    return mean, math.sqrt(var / (n - 1)) if n > 1 and var > 0 else math.nan


def _percentile(sorted_values: torch.Tensor, fraction: float) -> float:
    """llama.cpp's percentile: linear between the two sorted values around fraction × (n - 1)."""
    n = sorted_values.numel()
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = fraction * (n - 1)
    i = int(p)
    p -= i
    return float((1 - p) * sorted_values[i] + p * sorted_values[min(i + 1, n - 1)])


def summarize(t: TokenKL, n_ctx: int, n_chunks: int, seconds: float) -> KLDivergenceResult:
    """The statistics llama.cpp prints, from the per-position values."""
    n = t.kld.numel()
    mean_kld, kld_se = _mean_and_stderr(t.kld)
    ordered = torch.sort(t.kld).values
    # llama.cpp's median: the mean of the two middle values when the count is even.
    median = float(ordered[n // 2]) if n % 2 else float(ordered[n // 2 - 1] + ordered[n // 2]) / 2
    pct = {name: median if name == "kld_median" else _percentile(ordered, f) for name, f in KLD_PERCENTILES}
    log_ppl, log_ppl_se = _mean_and_stderr(t.nll)
    log_base, log_base_se = _mean_and_stderr(t.nll_base)
    cov = float((t.nll * t.nll_base).mean() - t.nll.mean() * t.nll_base.mean()) / (n - 1) if n > 1 else math.nan
    ratio_se = math.sqrt(max(log_ppl_se**2 + log_base_se**2 - 2 * cov, 0.0))
    p_diff, p_diff_se = _mean_and_stderr(t.p_diff)
    mse, mse_se = _mean_and_stderr(t.p_diff * t.p_diff)
    rms = math.sqrt(mse)
    same = float(t.same_top.double().mean())
    return KLDivergenceResult(
        mean_kld=mean_kld,
        mean_kld_stderr=kld_se,
        **pct,
        perplexity=math.exp(log_ppl),
        perplexity_stderr=math.exp(log_ppl) * log_ppl_se,
        perplexity_base=math.exp(log_base),
        perplexity_base_stderr=math.exp(log_base) * log_base_se,
        log_ppl_ratio=log_ppl - log_base,
        log_ppl_ratio_stderr=ratio_se,
        mean_p_diff=p_diff,
        mean_p_diff_stderr=p_diff_se,
        rms_p_diff=rms,
        rms_p_diff_stderr=0.5 / rms * mse_se if rms > 0 else math.nan,
        max_abs_p_diff=float(t.p_diff.abs().max()),
        same_top_p=same,
        same_top_p_stderr=math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else math.nan,
        n_ctx=n_ctx,
        n_chunks=n_chunks,
        tokens_scored=n,
        seconds=seconds,
    )


def _concat(parts: list[TokenKL]) -> TokenKL:
    return TokenKL(*(torch.cat([getattr(p, f) for p in parts]) for f in TokenKL.__dataclass_fields__))


def kl_divergence(
    model: Transformer,
    tokenizer: Tokenizer,
    base: str | os.PathLike[str],
    *,
    chunks: int | None = None,
    on_chunk: Callable[[KLDivergenceProgress], None] | None = None,
) -> KLDivergenceResult:
    """KL divergence of `model` from the base whose log-probs `base` holds (written by
    `perplexity(..., kl_divergence_base=...)` or by llama-perplexity --kl-divergence-base), over
    the file's tokens and windows (at most `chunks` windows; None: all of them)."""
    start = time.perf_counter()
    header = read_header(base)
    check_settings(header.n_ctx, chunks, model.config.context_length)
    if header.n_vocab != model.config.vocab_size:
        raise InvalidParameterError(
            "kl_divergence_base",
            f"{base} was written for a vocabulary of {header.n_vocab} tokens; this model has "
            f"{model.config.vocab_size}: compare models that share a tokenizer",
        )
    windows = perplexity_windows(header.tokens, header.n_ctx, tokenizer.bos_id if tokenizer.add_bos else None, chunks)
    first = header.n_ctx // 2
    parts: list[TokenKL] = []
    for i, (window, rows) in enumerate(zip(windows, read_chunks(base, header), strict=False)):
        logits = window_logits(model, window)  # (n_ctx/2 - 1, vocab): positions first .. n_ctx-2
        base_log_probs = dequantize_log_probs(rows, header.n_vocab).to(logits.device)
        parts.append(token_kl(logits, base_log_probs, window[first + 1 :]))
        if on_chunk is not None:
            so_far = _concat(parts)
            mean, se = _mean_and_stderr(so_far.kld)
            ppl = math.exp(float(so_far.nll.mean()))
            on_chunk(KLDivergenceProgress(i, len(windows), ppl, mean, se, float(so_far.same_top.double().mean())))
    return summarize(_concat(parts), header.n_ctx, len(windows), time.perf_counter() - start)
