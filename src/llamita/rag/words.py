"""How text becomes search words, the same way for chunks and for queries: lower case without
accents (what FTS5's `unicode61 remove_diacritics 2` tokenizer indexes), function words, and
Snowball stems so that *parámetros* finds *parámetro* and *entrenamiento* finds *entrenar*.

FTS5 has no stemmer of its own, and Python's sqlite3 cannot register a tokenizer, so the stems
are computed here and stored in a column of their own (rag/store.py); the unstemmed columns
keep the larger weight, so an exact word still ranks above a shared stem."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Protocol

# Snowball's Spanish rules (snowballstemmer, the reference algorithms compiled to pure Python).
# English words pass through them mostly unharmed (plural -s and -es go); one language per
# collection keeps index and query stems the same.
STEMMER_LANGUAGE = "spanish"

# Function words of Spanish and English, accents removed: dropped from the BM25 query, since
# FTS5 would otherwise match nearly every chunk on "de" or "the" (slow, and no help to rank).
STOPWORDS = frozenset(
    """
a al algo algun alguna algunas alguno algunos ante antes aqui asi aun cada como con contra cual
cuales cuando cuanta cuantas cuanto cuantos de del desde donde dos el ella ellas ellos en entre
era es esa esas ese eso esos esta estan estas este esto estos fue ha han hay la las le les lo los
mas me mi mucho muy ni no nos o otra otro para pero poco por porque puede pueden que quien se
segun ser si sin sobre son su sus tambien tiene tienen toda todo todos tu un una uno unos y ya
the of and to in is are was were be been it its this that these those for on with as by at from
or an what which who whom how why when where does do did can could should would will has have
had not no but if then than so such into about over under between there their they them he she
we you your our my me i
""".split()
)

_WORD = re.compile(r"\w+")


def fold(word: str) -> str:
    """Lower case without accents: the form FTS5's remove_diacritics tokenizer indexes."""
    return "".join(c for c in unicodedata.normalize("NFKD", word.lower()) if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """The words of `text` as FTS5's unicode61 tokenizer splits them (letters, digits, _)."""
    return _WORD.findall(text)


def content_words(text: str) -> list[str]:
    """The words of `text` without function words (all of them if that leaves none)."""
    found = words(text)
    return [w for w in found if fold(w) not in STOPWORDS] or found


class _Stemmer(Protocol):
    """The part of snowballstemmer's stemmers we use (the package ships no types)."""

    def stemWord(self, word: str) -> str: ...


@lru_cache(maxsize=1)
def _stemmer() -> _Stemmer:  # built once: constructing a Snowball stemmer compiles its tables
    import snowballstemmer

    stemmer: _Stemmer = snowballstemmer.stemmer(STEMMER_LANGUAGE)
    return stemmer


@lru_cache(maxsize=1 << 17)
def _stem(word: str) -> str:
    # Cached: the pure-Python stemmer does ~50,000 words/s, and a collection's words repeat
    # (Zipf), so most chunks' words are looked up, not stemmed.
    return fold(_stemmer().stemWord(word.lower()))


def stems(tokens: list[str]) -> list[str]:
    """The folded Snowball stem of each word (the stemmer reads the accented lower-case word:
    its Spanish rules look at accents, and its last step removes them)."""
    return [_stem(t) for t in tokens]


def stem_text(text: str) -> str:
    """What a chunk's `stems` column holds: the stem of every word, space-separated."""
    return " ".join(stems(words(text)))
