"""Build the byte-level BPE encoder (Rust `tokenizers`) from a GGUF vocabulary.

GGUF "gpt2" vocabularies store every normal token in GPT-2's byte-to-unicode spelling (a space
is "Ġ", a newline "Ċ"), and merges as "left right" strings in priority order. The `tokenizers`
BPE model takes both as they are; we only add the pre-tokenizer the file names.
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
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
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
    table = unicode_to_byte()
    try:
        return bytes(table[ch] for ch in text)
    except KeyError:
        return text.encode("utf-8")


def split_merge(merge: str) -> tuple[str, str]:
    """"left right" -> ("left", "right"); the separator is the first space after position 0."""
    pos = merge.find(" ", 1)
    if pos < 0:
        raise TokenizerError(f"malformed BPE merge {merge!r} in tokenizer.ggml.merges (no space)")
    return merge[:pos], merge[pos + 1 :]


def build_bpe(
    tokens: list[str], merges: list[str], spec: PreTokenizerSpec
) -> RustTokenizer:
    """A `tokenizers.Tokenizer` that byte-level-BPE-encodes plain text into GGUF token ids.

    It has no added tokens: control tokens are matched (or not) by the caller, so a string like
    "<|im_start|>" in plain text is always encoded as ordinary characters here.
    """
    # Empty entries (seen in some converted files) can never be produced by BPE; leave them out.
    vocab = {text: token_id for token_id, text in enumerate(tokens) if text}
    try:
        model = models.BPE(
            vocab, [split_merge(m) for m in merges], ignore_merges=spec.ignore_merges
        )
    except TokenizerError:
        raise
    except Exception as exc:  # tokenizers raises plain Exception for bad merges
        raise TokenizerError(f"cannot build the BPE vocabulary from the model file: {exc}") from exc
    tokenizer = RustTokenizer(model)
    tokenizer.pre_tokenizer = build_pre_tokenizer(spec)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer
