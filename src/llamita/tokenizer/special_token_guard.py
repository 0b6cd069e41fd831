"""Keep special-token strings in chat messages from becoming control tokens.

Before a chat template is rendered, every special-token string inside caller data (message
contents, tool arguments, tool definitions...) is swapped for a private-use code point that
appears nowhere else. After rendering, only the template's own text can still match a special
token; the stand-ins are swapped back and tokenized as the plain text they were.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# Supplementary Private Use Area-A: 65,534 code points no tokenizer gives meaning to.
_FIRST_STAND_IN = 0xF0000
_LAST_STAND_IN = 0xFFFFD


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


class SpecialShield:
    """Swaps special-token strings for stand-ins in caller data, and back in rendered text.

    special_re: matches any special-token string (longest first).
    reserved: everything whose characters the stand-ins must not collide with: the template
        source and all the data that will be protected (str / dict / list / tuple, nested).
    """

    def __init__(self, special_re: re.Pattern[str], *reserved: Any) -> None:
        self._special_re = special_re
        self._stand_in: dict[str, str] = {}  # special text -> stand-in character
        self._original: dict[int, str] = {}  # ord(stand-in) -> special text
        self._taken = {ch for text in _strings(reserved) for ch in text if ord(ch) >= _FIRST_STAND_IN}
        self._next = _FIRST_STAND_IN

    def protect(self, value: Any) -> Any:
        """A copy of `value` (str / dict / list / tuple, nested) with specials swapped out.

        Dict keys are protected too; tuples come back as lists; other values are kept as they are.
        `value` must be covered by the `reserved` data given to the constructor.
        """
        return self._protect(value)

    def restore(self, text: str) -> str:
        """`text` with every stand-in turned back into its special-token string."""
        return text.translate(self._original) if self._original else text

    def _protect(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._special_re.sub(self._swap, value)
        if isinstance(value, dict):
            return {self._protect(key): self._protect(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._protect(item) for item in value]
        return value

    def _swap(self, match: re.Match[str]) -> str:
        special = match.group()
        stand_in = self._stand_in.get(special)
        if stand_in is None:
            stand_in = self._new_stand_in()
            self._stand_in[special] = stand_in
            self._original[ord(stand_in)] = special
        return stand_in

    def _new_stand_in(self) -> str:
        while self._next <= _LAST_STAND_IN:
            candidate = chr(self._next)
            self._next += 1
            if candidate not in self._taken:
                return candidate
        raise ValueError("too many distinct special-token strings in one conversation")
