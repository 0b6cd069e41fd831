"""Where the model places texts and words: sentence embeddings with their cosine similarities,
and word analogies (A − B + C) in the input token-embedding table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llamita.api.llm import LLM
from llamita.engine.embeddings import embed
from llamita.errors import InvalidParameterError
from llamita.glass.common import piece

ROWS_PER_CHUNK = 4096


def embed_view(llm: LLM, texts: Sequence[str]) -> dict[str, Any]:
    """Each text's embedding (mean of the final hidden states, unit length) and the cosine
    similarity matrix (texts x texts; 1 = same direction). embeddings: (n, dim) numpy."""
    if not texts:
        raise InvalidParameterError("texts", "give at least one text")
    model, n = llm.loaded.model, llm.tokenizer.vocab_size
    ids = [llm.encode_prompt(t) for t in texts]
    vectors = torch.stack([embed(model, i, n) for i in ids]).cpu()
    return {
        "texts": list(texts),
        "n_tokens": [len(i) for i in ids],
        "similarity": (vectors @ vectors.T).tolist(),
        "embeddings": vectors.numpy(),
    }


def word_ids(llm: LLM, word: str) -> list[int]:
    """The tokens of a word as it appears inside a sentence (after a space), or alone when
    that spelling is a single token and the spaced one is not."""
    spaced = llm.tokenizer.encode(" " + word.strip())
    bare = llm.tokenizer.encode(word.strip())
    return bare if len(spaced) > 1 and len(bare) == 1 else spaced


def token_vectors(llm: LLM, ids: Sequence[int]) -> torch.Tensor:
    """Rows of the input embedding table, float32 (n, dim), decoded by the embedding module
    itself (the table may be kept quantized)."""
    model = llm.loaded.model
    with torch.inference_mode():
        rows: torch.Tensor = model.embed_tokens(torch.tensor(list(ids), device=model.device))
        return rows.float().cpu()


def nearest_tokens(llm: LLM, query: torch.Tensor, exclude: set[int]) -> torch.Tensor:
    """Cosine similarity (V,) of `query` (dim,) with every normal token's embedding; special
    tokens and `exclude` get -inf."""
    tok = llm.tokenizer
    vocab = tok.vocab_size
    query = torch.nn.functional.normalize(query, dim=0)
    sims = torch.empty(vocab)
    for start in range(0, vocab, ROWS_PER_CHUNK):
        rows = token_vectors(llm, range(start, min(start + ROWS_PER_CHUNK, vocab)))
        sims[start : start + len(rows)] = torch.nn.functional.normalize(rows, dim=1) @ query
    dropped = [i for i in range(vocab) if i in exclude or tok.is_special(i)]
    sims[dropped] = -torch.inf
    return sims


def analogy_view(llm: LLM, a: str, b: str, c: str, *, top: int = 5, expect: str | None = None) -> dict[str, Any]:
    """A − B + C (king − man + woman) in the token-embedding space, answered by the nearest
    vocabulary entries by cosine, A, B and C themselves excluded.

    words: each word's token ids and pieces; a word of several tokens is the mean of its
    tokens' rows (multi_token True), which makes the arithmetic much less meaningful.
    answers: the `top` nearest tokens. expect: the rank of an expected answer (its first token)
    among all tokens, and its rank by similarity to C alone, to see whether A − B helped.
    """
    words: dict[str, dict[str, Any]] = {}  # "a", "b", "c" -> the word, its ids and pieces
    vectors = []
    for name, w in (("a", a), ("b", b), ("c", c)):
        ids = word_ids(llm, w)
        if not ids:
            raise InvalidParameterError(name, "is empty")
        words[name] = {
            "word": w,
            "ids": ids,
            "pieces": [piece(llm.tokenizer, t) for t in ids],
            "multi_token": len(ids) > 1,
        }
        vectors.append(token_vectors(llm, ids).mean(dim=0))
    exclude = {t for w in words.values() for t in w["ids"]}
    query = vectors[0] - vectors[1] + vectors[2]
    sims = nearest_tokens(llm, query, exclude)
    values, idx = torch.topk(sims, top)
    view: dict[str, Any] = {
        "words": words,
        "answers": [
            {"id": int(i), "piece": piece(llm.tokenizer, int(i)), "cosine": float(v)} for v, i in zip(values, idx)
        ],
    }
    if expect is not None:
        ids = word_ids(llm, expect)
        target = ids[0]
        baseline = nearest_tokens(llm, vectors[2], exclude)
        view["expect"] = {
            "word": expect,
            "ids": ids,
            "pieces": [piece(llm.tokenizer, t) for t in ids],
            "multi_token": len(ids) > 1,
            "rank": _rank(sims, target),
            "rank_from_c_alone": _rank(baseline, target),
            "cosine": float(sims[target]),
            "out_of": int(torch.isfinite(sims).sum()),
        }
    return view


def _rank(sims: torch.Tensor, target: int) -> int | None:
    if not bool(torch.isfinite(sims[target])):
        return None  # the expected answer is A, B or C itself
    return int((sims > sims[target]).sum()) + 1
