"""`ask --explain`: how much of the model's attention, while it wrote the answer, went to each
retrieved chunk. For every answer token, the attention weights of the row that produced it
(the position before it) are summed over every layer and head, over the tokens of each chunk
in the prompt; dividing by n_layers x n_heads makes each token's total 1. A chunk's share is
the mean over the answer's tokens, so the shares add up to the part of the answer's attention
that went to retrieved text; the rest went to the instructions, the question, the chat
template and the answer itself (`other`). Computed from the model's own attention maps
(model/attention_maps.py), one forward pass over prompt + answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llamita.api.llm import LLM
from llamita.model.attention_maps import attention_maps
from llamita.rag.answer import AnswerPrompt, source_label


@dataclass
class Explanation:
    """shares[i]: the answer's mean attention to source i+1 (0..1); retrieved: their sum;
    per_token: (answer tokens, sources) the same per answer token (the heatmap); spans: each
    source's token positions [start, end) in the prompt; other: 1 - retrieved."""

    shares: list[float]
    retrieved: float
    other: float
    per_token: np.ndarray
    spans: list[tuple[int, int]]
    answer_pieces: list[str]


def source_spans(llm: LLM, prompt: AnswerPrompt) -> list[tuple[int, int]]:
    """Token positions [start, end) of each source's text in the prompt, found in the bytes
    the prompt's tokens spell (byte-level BPE: tokens concatenate to the text)."""
    pieces = [llm.tokenizer.token_bytes(t) for t in prompt.prompt_token_ids]
    ends = np.cumsum([len(p) for p in pieces])
    spelled = b"".join(pieces)
    spans = []
    cursor = 0
    for number, hit in enumerate(prompt.sources, start=1):
        header = f"[{number}] ({source_label(hit)})\n".encode()
        at = spelled.index(header, cursor) + len(header)
        text = hit.text.encode()
        if spelled[at : at + len(text)] != text:
            raise ValueError(f"source [{number}]'s text is not where the prompt lists it")
        first = int(np.searchsorted(ends, at, side="right"))  # the token holding byte `at`
        last = int(np.searchsorted(ends, at + len(text), side="left")) + 1
        spans.append((first, last))
        cursor = at + len(text)
    return spans


def explain(llm: LLM, prompt: AnswerPrompt, answer_ids: Sequence[int]) -> Explanation:
    """The attention the answer `answer_ids` paid to each of `prompt`'s sources."""
    ids = list(prompt.prompt_token_ids) + list(answer_ids)
    n_prompt, n_answer = len(prompt.prompt_token_ids), len(answer_ids)
    model = llm.loaded.model
    # Row p produces token p + 1: the answer's tokens come from rows n_prompt - 1 ... S - 2.
    rows = slice(n_prompt - 1, n_prompt - 1 + n_answer)
    maps = attention_maps(model, torch.tensor([ids], device=model.device), llm.adapter_rows(), rows)
    per_row = maps.sum(dim=(0, 1)).cpu().numpy() / (maps.shape[0] * maps.shape[1])  # (A, S), rows sum to 1
    spans = source_spans(llm, prompt)
    per_token = np.stack([per_row[:, a:b].sum(axis=1) for a, b in spans], axis=1) if spans else np.zeros((n_answer, 0))
    shares = per_token.mean(axis=0) if n_answer else np.zeros(len(spans))
    retrieved = float(shares.sum())
    pieces = [llm.tokenizer.token_piece(t) for t in answer_ids]
    return Explanation([float(s) for s in shares], retrieved, 1.0 - retrieved, per_token, spans, pieces)
