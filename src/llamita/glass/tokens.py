"""How text becomes tokens: pieces, ids, byte lengths, tokens per word, and the cost of the same
sentence in several languages."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from llamita.glass.common import piece
from llamita.tokenizer.tokenizer import Tokenizer


def tokenize_view(tokenizer: Tokenizer, text: str) -> dict[str, Any]:
    """The tokens of `text` (plain text, no BOS, special-token strings kept as characters).

    tokens: one dict per token: position, id, piece (readable text; bytes of a partial UTF-8
    character as \\xNN), bytes (length in bytes), whole_chars (False when the token holds part
    of a multi-byte character). words: each whitespace-separated word and how many tokens
    overlap it. Ratios: tokens_per_word, chars_per_token.
    """
    ids = tokenizer.encode(text)
    tokens = []
    offsets = [0]  # byte offset where each token starts, then the total
    for i, t in enumerate(ids):
        raw = tokenizer.token_bytes(t)
        whole = True
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            whole = False
        tokens.append({"position": i, "id": t, "piece": piece(tokenizer, t), "bytes": len(raw), "whole_chars": whole})
        offsets.append(offsets[-1] + len(raw))
    words = []
    for m in re.finditer(r"\S+", text):
        start = len(text[: m.start()].encode("utf-8"))
        end = start + len(m.group().encode("utf-8"))
        n = sum(1 for i in range(len(ids)) if offsets[i] < end and offsets[i + 1] > start)
        words.append({"word": m.group(), "tokens": n})
    n_tokens = len(ids)
    return {
        "text": text,
        "ids": ids,
        "tokens": tokens,
        "words": words,
        "n_tokens": n_tokens,
        "n_chars": len(text),
        "n_bytes": len(text.encode("utf-8")),
        "n_words": len(words),
        "tokens_per_word": n_tokens / len(words) if words else 0.0,
        "chars_per_token": len(text) / n_tokens if n_tokens else 0.0,
    }


def compare_view(tokenizer: Tokenizer, texts: Sequence[str]) -> dict[str, Any]:
    """`tokenize_view` of each text side by side; `relative_tokens` is each text's token count
    over the first text's (1.5 = the same content costs 50% more tokens)."""
    views = [tokenize_view(tokenizer, t) for t in texts]
    first = views[0]["n_tokens"] if views else 0
    for v in views:
        v["relative_tokens"] = v["n_tokens"] / first if first else 0.0
    return {"texts": views}
