"""Blocks -> chunks for retrieval: a chunk follows the document's structure (a heading starts a
new one once the current one holds enough text; paragraphs are never split unless one alone is
over the budget) and stays within a token budget counted by the embedding model's own
tokenizer. A chunk cut for size begins with the last sentences of the one before (the overlap),
so a fact that straddles the cut is whole in one of them."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llamita.errors import InvalidParameterError
from llamita.rag.readers import Block

_SENTENCE_END = re.compile(r"(?<=[.!?…;:])\s+|\n+")


@dataclass(frozen=True)
class Chunk:
    """One retrievable piece of a document. position: its index in the document."""

    text: str
    heading: str
    page_start: int | None
    page_end: int | None
    n_tokens: int
    position: int


@dataclass(frozen=True)
class _Unit:
    text: str
    heading: str
    page: int | None
    n_tokens: int
    starts_section: bool = False


def sentences(text: str) -> list[str]:
    """Sentences and lines of `text`, trimmed, none empty."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _pack(pieces: Sequence[str], limit: int, count: Callable[[str], int], joiner: str) -> list[str]:
    """Greedy groups of consecutive pieces whose joined text counts at most `limit` tokens; a
    piece over the limit alone is split further (sentences, then words, then characters)."""
    out: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current}{joiner}{piece}" if current else piece
        if count(candidate) <= limit:
            current = candidate
            continue
        if current:
            out.append(current)
        if count(piece) <= limit:
            current = piece
        else:
            out.extend(_split(piece, limit, count))
            current = ""
    if current:
        out.append(current)
    return out


def _split(text: str, limit: int, count: Callable[[str], int]) -> list[str]:
    parts = sentences(text)
    if len(parts) > 1:
        return _pack(parts, limit, count, " ")
    words = text.split()
    if len(words) > 1:
        return _pack(words, limit, count, " ")
    # One "word" longer than the budget (a URL, a base64 blob): cut by characters.
    step = max(1, len(text) * limit // max(count(text), 1))
    return [text[i : i + step] for i in range(0, len(text), step)]


def chunk_blocks(
    blocks: Sequence[Block], count: Callable[[str], int], *, budget: int = 256, overlap: int = 32
) -> list[Chunk]:
    """Chunks of at most about `budget` tokens (the joins between paragraphs may add a token
    or two) from a document's blocks. count(text) -> number of tokens."""
    if budget < 16:
        raise InvalidParameterError("chunk_tokens", f"must be at least 16, got {budget}")
    if not 0 <= overlap <= budget // 2:
        raise InvalidParameterError("chunk_overlap", f"must be in 0..{budget // 2} (half the budget), got {overlap}")
    # Pieces leave room for the overlap carried in front of them.
    room = budget - overlap
    units = []
    for block in blocks:
        for i, piece in enumerate(_pack([block.text], room, count, "")):
            units.append(_Unit(piece, block.heading, block.page, count(piece), block.is_heading and i == 0))
    min_fill = budget // 3  # below it a heading does not close the chunk: tiny sections merge
    chunks: list[Chunk] = []
    current: list[_Unit] = []
    carried = 0  # how many units at the front of `current` are overlap

    def emit() -> None:
        text = "\n\n".join(u.text for u in current)
        pages = [u.page for u in current if u.page is not None]
        own = current[carried] if carried < len(current) else current[0]
        chunks.append(
            Chunk(text, own.heading, min(pages, default=None), max(pages, default=None), count(text), len(chunks))
        )

    for unit in units:
        size = sum(u.n_tokens for u in current)
        section_break = unit.starts_section and size - sum(u.n_tokens for u in current[:carried]) >= min_fill
        if current and carried < len(current) and (section_break or size + unit.n_tokens > budget):
            emit()
            current = [] if section_break else _tail(current, overlap, count)
            carried = len(current)
        current.append(unit)
    if current and carried < len(current):
        emit()
    return chunks


def _tail(units: Sequence[_Unit], overlap: int, count: Callable[[str], int]) -> list[_Unit]:
    """The last sentences of `units`, at most `overlap` tokens, as units of their own."""
    taken: list[_Unit] = []
    used = 0
    for unit in reversed(units):
        for sentence in reversed(sentences(unit.text)):
            n = count(sentence)
            if used + n > overlap:
                return taken
            taken.insert(0, _Unit(sentence, unit.heading, unit.page, n))
            used += n
    return taken
