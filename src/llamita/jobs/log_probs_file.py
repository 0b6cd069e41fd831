"""The base model's log-probabilities over a text, in the file llama.cpp's `llama-perplexity
--kl-divergence-base FILE` writes, so a base made by either program can be compared by either.

Layout (little-endian, as tools/perplexity/perplexity.cpp writes and reads it):

- header: the 8 bytes `_logits_`, n_ctx (uint32), n_vocab (int32), n_chunks (int32), then the
  n_chunks × n_ctx token ids (int32) as the text tokenized (BOS not yet put on each window);
- then per window, one row per scored position (n_ctx - 1 - n_ctx/2 rows, the positions whose
  next token is scored: n_ctx/2 .. n_ctx-2), each row `row_width(n_vocab)` uint16s: the row's
  scale and min_log_prob as two float32s, then n_vocab log-probs quantized linearly on 16 bits
  (padded to an even count).

A log-prob lp is stored as round((logit - min_logit) / scale) with min_logit = max(smallest
logit, largest logit - 16) and scale = (max_logit - min_logit) / 65535; it reads back as
scale × q + min_log_prob, within scale/2 ≤ 1.3e-4 nats, and every log-prob below the largest
minus 16 reads back as min_log_prob (≤ -16, which the KL sum skips, as llama.cpp's does).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from llamita.errors import InvalidParameterError

MAGIC = b"_logits_"
LOG_PROB_RANGE = 16.0  # nats below the top log-prob that are kept; the rest read back as ≤ -16
_HEADER = struct.Struct("<8sIii")


def row_width(n_vocab: int) -> int:
    """uint16s a row takes: two float32s, then n_vocab values padded to an even count."""
    return 2 * ((n_vocab + 1) // 2) + 4


def scored_rows(n_ctx: int) -> int:
    """Positions scored in a window of n_ctx tokens: n_ctx/2 .. n_ctx-2."""
    return n_ctx - 1 - n_ctx // 2


def quantize_log_probs(logits: torch.Tensor) -> np.ndarray:
    """(n, n_vocab) float32 logits -> (n, row_width(n_vocab)) uint16 rows of log-probs, computed
    in float32 with a float64 sum of exponentials, as llama.cpp does."""
    logits = logits.detach().float().cpu()
    n, n_vocab = logits.shape
    max_logit = logits.max(dim=-1, keepdim=True).values  # (n, 1)
    min_logit = torch.maximum(logits.min(dim=-1, keepdim=True).values, max_logit - LOG_PROB_RANGE)
    sum_exp = torch.exp(logits - max_logit).double().sum(dim=-1, keepdim=True)
    log_sum_exp = torch.log(sum_exp).float()
    min_log_prob = min_logit - max_logit - log_sum_exp  # (n, 1) float32
    scale = (max_logit - min_logit) / 65535.0
    inv_scale = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    # Round half to even, as llama.cpp's nearest_int (the 1.5 × 2^23 trick) does.
    q = torch.where(logits > min_logit, torch.round(inv_scale * (logits - min_logit)), 0.0).clamp_(0, 65535)
    rows = np.zeros((n, row_width(n_vocab)), dtype=np.uint16)
    rows[:, :4] = np.concatenate([scale.numpy(), min_log_prob.numpy()], axis=1).astype("<f4").view(np.uint16)
    rows[:, 4 : 4 + n_vocab] = q.numpy().astype(np.uint16)
    return rows


def dequantize_log_probs(rows: np.ndarray, n_vocab: int) -> torch.Tensor:
    """(n, row_width(n_vocab)) uint16 rows -> (n, n_vocab) float32 log-probs, scale × q + min."""
    rows = np.ascontiguousarray(rows, dtype=np.uint16)
    head = torch.from_numpy(rows[:, :4].copy().view("<f4").astype(np.float32))  # (n, 2): scale, min
    q = torch.from_numpy(rows[:, 4 : 4 + n_vocab].astype(np.float32))
    return head[:, :1] * q + head[:, 1:2]


@dataclass(frozen=True)
class LogProbsHeader:
    n_ctx: int
    n_vocab: int
    n_chunks: int
    tokens: list[int]  # n_chunks × n_ctx ids, the first of each window as the text has it

    @property
    def data_offset(self) -> int:
        return _HEADER.size + 4 * len(self.tokens)

    @property
    def chunk_bytes(self) -> int:
        return 2 * scored_rows(self.n_ctx) * row_width(self.n_vocab)


class LogProbsWriter:
    """Writes a base file window by window under a temporary name; `close()` renames it into
    place, so an interrupted run never leaves a half file where a complete one is expected."""

    def __init__(self, path: str | os.PathLike[str], n_ctx: int, n_vocab: int, tokens: Sequence[int]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise InvalidParameterError("kl_divergence_base", f"{self.path} is a folder, not a file")
        if len(tokens) % n_ctx:
            raise ValueError(f"{len(tokens)} tokens are not whole windows of {n_ctx}")
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._rows_left = len(tokens) // n_ctx * scored_rows(n_ctx)
        self._n_vocab = n_vocab
        try:
            self._file: BinaryIO = open(self._tmp, "wb")  # noqa: SIM115 - closed by close()/abort()
        except OSError as e:
            raise InvalidParameterError("kl_divergence_base", f"cannot write {self.path}: {e.strerror}") from None
        self._file.write(_HEADER.pack(MAGIC, n_ctx, n_vocab, len(tokens) // n_ctx))
        self._file.write(np.asarray(tokens, dtype="<i4").tobytes())

    def write(self, logits: torch.Tensor) -> None:
        """One window's scored logits, (n_ctx/2 - 1, n_vocab)."""
        if logits.shape[-1] != self._n_vocab:
            raise ValueError(f"logits have {logits.shape[-1]} columns, the file {self._n_vocab}")
        self._rows_left -= logits.shape[0]
        self._file.write(quantize_log_probs(logits).tobytes())

    def close(self) -> None:
        self._file.close()
        if self._rows_left != 0:
            self._tmp.unlink(missing_ok=True)
            raise ValueError("the base file was closed before every window was written")
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def read_header(path: str | os.PathLike[str]) -> LogProbsHeader:
    """The header of a base file, checked against the file's size. InvalidParameterError for a
    missing, foreign, truncated or inconsistent file."""
    path = Path(path)

    def bad(reason: str) -> InvalidParameterError:
        return InvalidParameterError("kl_divergence_base", f"{path} {reason}")

    if not path.is_file():
        raise bad(
            "is a folder, not a base file"
            if path.is_dir()
            else "not found: write it first with --kl-divergence-base alone"
        )
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size or head[:8] != MAGIC:
            raise bad("is not a file of base log-probabilities (it does not start with _logits_)")
        _, n_ctx, n_vocab, n_chunks = _HEADER.unpack(head)
        if n_ctx < 4 or n_vocab < 1 or n_chunks < 1:
            raise bad(f"has a bad header: n_ctx={n_ctx}, n_vocab={n_vocab}, n_chunks={n_chunks}")
        tokens = np.frombuffer(f.read(4 * n_ctx * n_chunks), dtype="<i4")
    header = LogProbsHeader(n_ctx, n_vocab, n_chunks, tokens.tolist())
    expected = header.data_offset + n_chunks * header.chunk_bytes
    if len(tokens) != n_ctx * n_chunks or size != expected:
        raise bad(f"is {size} bytes but its header says {expected}: the file is truncated or corrupt")
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= n_vocab):
        raise bad(f"holds token ids outside its vocabulary of {n_vocab}")
    return header


def read_chunks(path: str | os.PathLike[str], header: LogProbsHeader) -> Iterator[np.ndarray]:
    """Each window's (n_ctx/2 - 1, row_width(n_vocab)) uint16 rows, in order."""
    shape = (scored_rows(header.n_ctx), row_width(header.n_vocab))
    with open(path, "rb") as f:
        f.seek(header.data_offset)
        for _ in range(header.n_chunks):
            yield np.frombuffer(f.read(header.chunk_bytes), dtype="<u2").reshape(shape)
