"""Ranking chunks for a query: BM25 over the FTS5 index, dense cosine similarity over the
embeddings, and the two fused by reciprocal rank fusion (Cormack, Clarke & Büttcher 2009:
score = Σ 1 / (k + rank), k = 60), which needs no calibration between the two scores."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

RRF_K = 60
# Function words of Spanish and English, accents removed: dropped from the BM25 query, since
# FTS5 would otherwise match nearly every chunk on "de" or "the" (slow, and no help to rank).
STOPWORDS = frozenset("""
a al algo algun alguna algunas alguno algunos ante antes aqui asi aun cada como con contra cual
cuales cuando cuanta cuantas cuanto cuantos de del desde donde dos el ella ellas ellos en entre
era es esa esas ese eso esos esta estan estas este esto estos fue ha han hay la las le les lo los
mas me mi mucho muy ni no nos o otra otro para pero poco por porque puede pueden que quien se
segun ser si sin sobre son su sus tambien tiene tienen toda todo todos tu un una uno unos y ya
the of and to in is are was were be been it its this that these those for on with as by at from
or an what which who whom how why when where does do did can could should would will has have
had not no but if then than so such into about over under between there their they them he she
we you your our my me i
""".split())


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



def _fold(word: str) -> str:
    """Lower case without accents: the form FTS5's remove_diacritics tokenizer indexes."""
    return "".join(c for c in unicodedata.normalize("NFKD", word.lower()) if not unicodedata.combining(c))


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression: any of the query's content words (OR), each quoted so that
    FTS5 syntax in the user's text is read as words. None when the text has no words."""
    words = [w for w in re.findall(r"\w+", text) if w]
    content = [w for w in words if _fold(w) not in STOPWORDS] or words
    unique = list(dict.fromkeys(_fold(w) for w in content))
    return " OR ".join(f'"{w}"' for w in unique) if unique else None


def dense_ranking(ids: np.ndarray, matrix: torch.Tensor, query: np.ndarray, limit: int
                  ) -> list[tuple[int, float]]:
    """(chunk id, cosine) of the `limit` rows of `matrix` (n, dim) nearest `query` (dim,),
    best first; exact (every row scored), as sqlite-vec's vec0 also does."""
    if len(ids) == 0:
        return []
    scores = matrix @ torch.from_numpy(np.asarray(query, dtype=np.float32)).to(matrix.dtype)
    top = torch.topk(scores, min(limit, len(ids)))
    return [(int(ids[i]), float(s)) for s, i in zip(top.values.float(), top.indices)]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """(id, fused score) over several best-first rankings of ids, best first; ties keep the
    order of first appearance."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])
