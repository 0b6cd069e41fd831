"""Backslash escapes in command-line text (`--stop "\\n\\n"`, `--system`, prompts), as llama.cpp's
CLI reads them.

A shell passes `"\\n"` through as a backslash and an n; a user who writes `--stop "\\n\\n"`
means a blank line. llama.cpp processes escapes by default (`--no-escape` to turn it off) and
so do we: `\\n` `\\r` `\\t` `\\'` `\\"` `\\\\` and `\\xHH`. A backslash before any other
character, or a `\\x` without two hex digits, is kept as it is, so Windows paths and regular
expressions survive.
"""

from __future__ import annotations

import re

_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)", re.DOTALL)


def process_escapes(text: str) -> str:
    """`text` with its backslash escapes replaced by the characters they stand for."""

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if len(code) == 3:  # xHH
            return chr(int(code[1:], 16))
        return _SIMPLE.get(code, match.group(0))

    return _ESCAPE.sub(one, text)
