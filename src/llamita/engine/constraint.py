"""Grammar-constrained decoding: at each step only tokens that keep the text inside a grammar
(JSON, a JSON Schema, a regex, a Lark or GBNF grammar) may be drawn.

The grammar engine is llguidance (the library behind vLLM's, SGLang's and llama.cpp's
structured output): it walks the grammar over token *bytes*, so it works with any of our
vocabularies, and computes the allowed-token mask of a step in tens of microseconds. We give it
our tokenizer's bytes per id; it never tokenizes on its own except to heal forced text.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

import llguidance
import torch

from llamita.errors import InvalidParameterError
from llamita.sampling_params import Grammar
from llamita.tokenizer import Tokenizer

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# JSON is written compactly: a flexible-whitespace grammar lets a small model pad with
# newlines until max_tokens, and the compact form is what json.dumps and OpenAI produce.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}
# llguidance marks special (control) tokens by a leading 0xFF byte so no grammar text can
# produce them by accident.
_SPECIAL_MARK = b"\xff"
_BIT = torch.arange(32, dtype=torch.int32)


class _Vocabulary:
    """What llguidance.TokenizerWrapper reads from a tokenizer: bytes of every id, specials,
    the end-of-sequence id, and an encoder for text it has to insert."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        n = tokenizer.vocab_size
        self.special_token_ids = [i for i in range(n) if tokenizer.is_special(i)]
        special = set(self.special_token_ids)
        self.tokens = [(_SPECIAL_MARK if i in special else b"") + tokenizer.token_bytes(i) for i in range(n)]
        self.eos_token_id = min(tokenizer.stop_ids) if tokenizer.stop_ids else None
        self.bos_token_id = tokenizer.bos_id

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text)


@functools.lru_cache(maxsize=4)
def grammar_tokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of `tokenizer` (built once per tokenizer: ~0.2 s for 49K tokens).
    Every stop id of the model counts as end of sequence, so a finished grammar lets the
    model end its turn with whichever it uses."""
    stops = sorted(tokenizer.stop_ids)
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocabulary(tokenizer)), eos_token=stops or None)


def bound_numbers(schema: Any) -> Any:
    """`schema` with every integer or number that has no bound limited to 16 integral digits,
    as llama.cpp's JSON-schema grammars do: a small model otherwise writes digits until
    max_tokens, and JSON parsers lose precision past 2**53 anyway."""
    if isinstance(schema, list):
        return [bound_numbers(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bound_numbers(v) for k, v in schema.items()}
    types = out.get("type")
    types = types if isinstance(types, list) else [types]
    if "integer" in types or "number" in types:
        limit = 10**16 - 1 if "number" not in types else 1e16
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = limit
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -limit
    return out


def compile_grammar(grammar: Grammar) -> str:
    """The llguidance grammar text of `grammar`; InvalidParameterError if it cannot be read."""
    try:
        if grammar.kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(
                bound_numbers(json.loads(grammar.source)), defaults=_JSON_OPTIONS
            )
        return llguidance.grammar_from(grammar.kind, grammar.source)
    except (ValueError, TypeError) as e:
        raise InvalidParameterError("grammar", f"cannot be compiled: {e}") from None


class TokenConstraint:
    """One sequence's position in its grammar: which tokens may come next, and when it is done."""

    def __init__(self, grammar: Grammar, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.matcher = llguidance.LLMatcher(grammar_tokenizer(tokenizer), compile_grammar(grammar), log_level=0)
        if self.matcher.is_error():
            raise InvalidParameterError("grammar", self.matcher.get_error())
        self._bits = torch.zeros((1, (tokenizer.vocab_size + 31) // 32), dtype=torch.int32)

    def allowed(self) -> torch.Tensor:
        """(vocab_size,) bool: True where the token keeps the text inside the grammar."""
        self.matcher.unsafe_compute_mask_ptr(self._bits.data_ptr(), self._bits.numel() * 4)
        bits = (self._bits[0, :, None] >> _BIT) & 1  # bit j of word w = token 32 w + j
        return bits.reshape(-1)[: self.vocab_size].bool()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` with every token the grammar forbids at -inf (a new tensor)."""
        return logits.masked_fill(~self.allowed(), float("-inf"))

    def consume(self, token: int) -> None:
        """Move past a drawn token (one `mask` allowed)."""
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"grammar rejected token {token}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """True when the grammar is complete and nothing but the end of the text may follow."""
        return self.matcher.is_stopped()
