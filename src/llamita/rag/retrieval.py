"""Ranking chunks for a query: BM25 over the FTS5 index (words and their stems), dense cosine
similarity over the embeddings, and the two fused by weighted reciprocal rank fusion (Cormack,
Clarke & Büttcher 2009: score = Σ w / (k + rank), k = 60), which needs no calibration between
the two scores. The dense ranking's weight is measured per collection, without labels
(`dense_weight`): an embedder that finds passages no better than chance gets no say."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from llamita.rag.words import content_words, fold, stems, words

RRF_K = 60


@dataclass
class Hit:
    """One retrieved chunk. score: the ranking's own (RRF for hybrid, BM25 higher-is-better,
    cosine for dense); bm25_rank / dense_rank: 1-based place in each ranking, None if absent."""

    id: int
    text: str
    source: str
    heading: str
    page_start: int | None
    page_end: int | None
    score: float
    bm25_rank: int | None = None
    dense_rank: int | None = None

    @property
    def location(self) -> str:
        """Where in the file: "p. 3", "pp. 3-4", the heading path, or ""."""
        if self.page_start is not None:
            same = self.page_end in (None, self.page_start)
            return f"p. {self.page_start}" if same else f"pp. {self.page_start}-{self.page_end}"
        return self.heading

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "location": self.location}


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression: any of the query's content words in the text or heading, or
    any of their stems in the stems column (OR), each quoted so that FTS5 syntax in the user's
    text is read as words. None when the text has no words."""
    content = content_words(text)
    if not content:
        return None
    exact = " OR ".join(f'"{w}"' for w in dict.fromkeys(fold(w) for w in content))
    stemmed = " OR ".join(f'"{s}"' for s in dict.fromkeys(stems(content)) if s)
    return f"{{text heading}} : ({exact}) OR stems : ({stemmed})" if stemmed else f"{{text heading}} : ({exact})"


def dense_ranking(ids: np.ndarray, matrix: torch.Tensor, query: np.ndarray, limit: int) -> list[tuple[int, float]]:
    """(chunk id, cosine) of the `limit` rows of `matrix` (n, dim) nearest `query` (dim,),
    best first; exact (every row scored), as sqlite-vec's vec0 also does."""
    if len(ids) == 0:
        return []
    scores = matrix @ torch.from_numpy(np.asarray(query, dtype=np.float32)).to(matrix.dtype)
    top = torch.topk(scores, min(limit, len(ids)))
    return [(int(ids[i]), float(s)) for s, i in zip(top.values.float(), top.indices)]


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], k: int = RRF_K, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """(id, fused score) over several best-first rankings of ids, best first: an id's score is
    Σ weight / (k + rank) over the rankings it is in (weights default to 1 each). Ties keep
    the order of first appearance, so a ranking of weight 0 only adds what the others lack."""
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


# -- how much the dense ranking is worth, per collection, without labels ----------------------
PSEUDO_QUERIES = 48  # sentences drawn from the collection's own chunks
PSEUDO_QUERY_WORDS = (6, 24)  # a sentence shorter than 6 words says too little; longer ones are cut


def pseudo_queries(
    chunks: Sequence[tuple[int, str]], count: int = PSEUDO_QUERIES, seed: int = 0
) -> list[tuple[int, str]]:
    """(chunk id, one of its sentences) for up to `count` chunks drawn at random (seeded, so a
    collection measures the same way twice): the queries whose answer is known to be that chunk."""
    order = sorted(chunks)
    rng = random.Random(seed)
    rng.shuffle(order)
    low, high = PSEUDO_QUERY_WORDS
    found = []
    for chunk_id, text in order:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(words(s)) >= low]
        if sentences:
            found.append((chunk_id, " ".join(rng.choice(sentences).split()[:high])))
            if len(found) == count:
                break
    return found


def mean_reciprocal_rank(ranks: Sequence[int | None]) -> float:
    """Mean of 1/rank, a rank of None (not found) counting 0."""
    return sum(1.0 / r for r in ranks if r) / len(ranks) if ranks else 0.0


def chance_reciprocal_rank(n_items: int, depth: int) -> float:
    """The expected 1/rank of one item when `n_items` are ordered at random and only the first
    `depth` places count: (1/n) Σ_{r=1..min(n, depth)} 1/r."""
    return sum(1.0 / r for r in range(1, min(n_items, depth) + 1)) / n_items if n_items else 0.0


def dense_weight(
    bm25_ranks: Sequence[int | None], dense_ranks: Sequence[int | None], n_items: int, depth: int
) -> float:
    """The weight of the dense ranking in the fusion (BM25's is 1), from the rank each ranking
    gave the known chunk of each pseudo-query: the dense ranking's mean reciprocal rank above
    chance, as a fraction q of BM25's above chance; weight = clip(2q - 1, 0, 1). An embedder
    that finds its passages at most half as well as BM25 gets 0 (it would only push BM25's
    answers down: SmolLM2-135M's mean-pooled states score q = 0.30 over the course texts, and
    cost hybrid 20 points of recall@5 at equal weight, 0.898 -> 0.695), one as good as BM25 or
    better gets 1, plain RRF. The cut at one half was chosen with the dev questions (docs/rag.md)."""
    chance = chance_reciprocal_rank(n_items, depth)
    bm25_gain = mean_reciprocal_rank(bm25_ranks) - chance
    if bm25_gain <= 0:  # BM25 finds nothing either (e.g. no text shared): nothing to compare to
        return 1.0
    quality = (mean_reciprocal_rank(dense_ranks) - chance) / bm25_gain
    return min(1.0, max(0.0, 2.0 * quality - 1.0))
