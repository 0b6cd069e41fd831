"""Turn a stream of generated token ids into text, one complete character at a time."""

from __future__ import annotations

import codecs

from llamita.tokenizer.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Streaming decoder for one sequence.

    A byte-level token can end in the middle of a UTF-8 character (an emoji is often split over
    two or three tokens); `add` holds such bytes back until the character is complete, so every
    returned chunk is clean text and the chunks joined equal `tokenizer.decode(ids, ...)`.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        # The stdlib incremental decoder keeps back only bytes that can still become a valid
        # character and replaces invalid ones exactly as a one-shot decode would.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """The text completed by `token_id` (possibly "")."""
        if self._skip_special and self._tokenizer.is_special(token_id):
            return ""
        return self._decoder.decode(self._tokenizer.token_bytes(token_id), final=False)

    def flush(self) -> str:
        """Whatever is held back (U+FFFD for an unfinished character); resets the stream."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text
