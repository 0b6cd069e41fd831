"""Pieces the views share: prompt -> ids, readable token pieces, finding a token by its text."""

from __future__ import annotations

from collections.abc import Sequence

from llamita.api.llm import LLM
from llamita.errors import InvalidParameterError
from llamita.tokenizer.tokenizer import Tokenizer


def prompt_ids(llm: LLM, prompt: str, raw: bool) -> list[int]:
    """The ids the model reads: the prompt as a user message in the chat template (ready for
    the assistant's answer), or with `raw` the plain text (BOS if the model wants one)."""
    if raw:
        return llm.encode_prompt(prompt)
    return llm.encode_chat([{"role": "user", "content": prompt}])


def piece(tokenizer: Tokenizer, token_id: int) -> str:
    """A token as text; bytes that are not whole UTF-8 characters (half an "ó") as \\xNN."""
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="backslashreplace")


def pieces(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    return [piece(tokenizer, t) for t in ids]


def label(text: str) -> str:
    """A piece made visible for a table or a plot axis: spaces as ␣, newlines as \\n."""
    return text.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t")


def find_tokens(tokenizer: Tokenizer, ids: Sequence[int], spec: str | int) -> list[int]:
    """Positions of the tokens `spec` names: an index (negative counts from the end) or a
    word, matched at its first occurrence in the decoded text; a word split into several
    tokens gives all of them, in order."""
    n = len(ids)
    if isinstance(spec, int) or spec.lstrip("-").isdigit():
        i = int(spec)
        if not -n <= i < n:
            raise InvalidParameterError("token", f"index {i} is outside the {n} tokens")
        return [i % n]
    target = spec.encode("utf-8")
    data = [tokenizer.token_bytes(t) for t in ids]
    start = b"".join(data).find(target)
    if not target or start < 0:
        raise InvalidParameterError("token", f"{spec!r} is not in the text")
    end, offset, found = start + len(target), 0, []
    for i, b in enumerate(data):
        if offset < end and offset + len(b) > start:
            found.append(i)
        offset += len(b)
    return found
