"""Build the byte-level BPE encoder (Rust `tokenizers`) from a GGUF vocabulary or tiktoken ranks.

GGUF "gpt2" vocabularies store every normal token in GPT-2's byte-to-unicode spelling (a space
is "Ġ", a newline "Ċ"), and merges as "left right" strings in priority order. The `tokenizers`
BPE model takes both as they are; we only add the pre-tokenizer the file names. A tiktoken rank
file (Meta's `tokenizer.model`) has no merges: `merges_from_ranks` derives them.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models

from llamita.errors import TokenizerError
from llamita.tokenizer.pretokenizer import PreTokenizerSpec, build_pre_tokenizer


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """GPT-2's reversible map from the 256 "printable" stand-in characters back to bytes."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {chr(b): b for b in printable}
    shift = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shift)] = b
            shift += 1
    return table


def byte_level_to_bytes(text: str) -> bytes:
    """The raw bytes of a token spelled in GPT-2 byte-level form.

    A token with a character outside the 256 stand-ins (an added token stored as plain text)
    is its UTF-8, as the `tokenizers` ByteLevel decoder does.
    """
    try:  # str.translate + latin-1: a C loop (a vocabulary has 50-130K tokens to convert)
        return text.translate(_byte_level_translation()).encode("latin-1")
    except UnicodeEncodeError:  # a character that is no stand-in
        return text.encode("utf-8")


@lru_cache(maxsize=1)
def _byte_level_translation() -> dict[int, int]:
    """str.translate table: each stand-in -> the character of its byte value (0-255), and every
    other character below 256 -> U+FFFF, so that latin-1 refuses it as it refuses the rest."""
    table = {ord(ch): b for ch, b in unicode_to_byte().items()}
    for c in range(256):
        table.setdefault(c, 0xFFFF)
    return table


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's map from a byte to its printable stand-in character (inverse of the above)."""
    return {b: ch for ch, b in unicode_to_byte().items()}


def bytes_to_byte_level(data: bytes) -> str:
    """Raw token bytes spelled as GPT-2 byte-level text (b" the" -> "Ġthe")."""
    table = byte_to_unicode()
    return "".join(table[b] for b in data)


def merges_from_ranks(vocab: dict[str, int]) -> list[str]:
    """BPE merges, highest priority first, equivalent to tiktoken's ranks.

    tiktoken merges, inside each pre-tokenized piece, the adjacent pair whose concatenation has
    the lowest rank. A `tokenizers` BPE merges the pair listed first. So every way of cutting a
    token in two known tokens becomes a merge, ordered by the rank of the token it makes (then by
    the ranks of its halves): the first listed applicable merge is then always the one making
    the lowest-ranked token, as in tiktoken (two cuts of one token that overlap in a piece are the
    only case where the order could differ). This is Hugging Face's conversion: for Llama 3 it
    gives exactly the 280,147 merges of the published tokenizer.json. Use it with
    `ignore_merges=True`: a piece that is itself a token is taken whole, tiktoken's first rule.

    vocab: byte-level spelling -> rank (= token id).
    """
    found: list[tuple[int, int, int, str, int]] = []
    rank_of = vocab.get
    for token, rank in vocab.items():
        for cut in range(1, len(token)):
            left_rank = rank_of(token[:cut])
            if left_rank is None:
                continue
            right_rank = rank_of(token[cut:])
            if right_rank is not None:
                found.append((rank, left_rank, right_rank, token, cut))
    found.sort()
    return [f"{token[:cut]} {token[cut:]}" for *_, token, cut in found]


def split_merge(merge: str) -> tuple[str, str]:
    """ "left right" -> ("left", "right"); the separator is the first space after position 0."""
    pos = merge.find(" ", 1)
    if pos < 0:
        raise TokenizerError(f"malformed BPE merge {merge!r} in tokenizer.ggml.merges (no space)")
    return merge[:pos], merge[pos + 1 :]


def build_bpe(tokens: list[str], merges: list[str], spec: PreTokenizerSpec) -> RustTokenizer:
    """A `tokenizers.Tokenizer` that byte-level-BPE-encodes plain text into GGUF token ids.

    It has no added tokens: control tokens are matched (or not) by the caller, so a string like
    "<|im_start|>" in plain text is always encoded as ordinary characters here.
    """
    # Empty entries (seen in some converted files) can never be produced by BPE; leave them out.
    vocab = {text: token_id for token_id, text in enumerate(tokens) if text}
    try:
        model = models.BPE(vocab, [split_merge(m) for m in merges], ignore_merges=spec.ignore_merges)
    except TokenizerError:
        raise
    except Exception as exc:  # tokenizers raises plain Exception for bad merges
        raise TokenizerError(f"cannot build the BPE vocabulary from the model file: {exc}") from exc
    tokenizer = RustTokenizer(model)
    tokenizer.pre_tokenizer = build_pre_tokenizer(spec)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer
