"""Per-request sampling parameters, validated once when they are built.

Imports no torch and nothing from llamita but `errors`, so the HTTP layer and the CLI can
build and check them without loading the tensor stack.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from llamita.errors import InvalidParameterError

# Largest seed a torch.Generator accepts (manual_seed takes an unsigned 64-bit value).
MAX_SEED = 2**64 - 1
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values: [-100, 100]

# Ollama's option names (an /api/chat `options` object, a Modelfile's PARAMETER) -> SamplingParams
# fields; num_predict maps to max_tokens through `ollama_num_predict`.
OLLAMA_OPTIONS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repeat_penalty": "repetition_penalty",
    "repeat_last_n": "penalty_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
}
# Ollama options about how the runner uses the hardware; they do not change the answer.
OLLAMA_HARDWARE_OPTIONS = {
    "num_thread",
    "num_gpu",
    "main_gpu",
    "num_batch",
    "use_mmap",
    "use_mlock",
    "numa",
    "low_vram",
    "vocab_only",
    "num_keep",
    "f16_kv",
    "logits_all",
}
# Ollama sampling options accepted at their "off" value only (None: any value, all mean off here).
OLLAMA_OFF_VALUES = {"mirostat": 0, "typical_p": 1.0, "tfs_z": 1.0, "penalize_newline": None}


def ollama_num_predict(value: Any) -> Any:
    """Ollama's num_predict as max_tokens: -1 (no limit) and -2 (fill the context) both end at
    the context window here (None); any other value is checked as max_tokens."""
    if isinstance(value, int) and not isinstance(value, bool) and value in (-1, -2):
        return None
    return value


GrammarKind = Literal["json_schema", "regex", "lark", "gbnf"]


@dataclass(frozen=True)
class Grammar:
    """A constraint on the generated text: only tokens that keep the text inside the grammar
    can be drawn (engine/constraint.py compiles it with llguidance).

    kind: "json_schema" (`source` is a JSON Schema, as a JSON string), "regex", "lark"
    (llguidance's Lark dialect) or "gbnf" (llama.cpp's grammar format). Build JSON ones with
    `Grammar.json_object()` / `Grammar.json_schema(schema)`.
    """

    kind: GrammarKind
    source: str

    def __post_init__(self) -> None:
        if self.kind not in ("json_schema", "regex", "lark", "gbnf"):
            message = f"kind must be json_schema, regex, lark or gbnf, got {self.kind!r}"
            raise InvalidParameterError("grammar", message)
        if not isinstance(self.source, str) or not self.source.strip():
            raise InvalidParameterError("grammar", "the grammar source is empty")

    @classmethod
    def json_object(cls) -> Grammar:
        """Any JSON object (OpenAI's response_format json_object, Ollama's format "json")."""
        return cls("json_schema", '{"type": "object"}')

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | str) -> Grammar:
        """JSON text valid under `schema` (a dict, or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise InvalidParameterError("json_schema", f"is not valid JSON: {e}") from None
        if not isinstance(schema, Mapping):
            got = type(schema).__name__
            raise InvalidParameterError("json_schema", f"must be a JSON object (a schema), got {got}")
        return cls("json_schema", json.dumps(schema))


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to pick each next token of one request.

    Defaults follow llama.cpp and Ollama (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05,
    repeat_last_n 64, repeat_penalty 1.0), so the same model answers here as it does there.
    The sampler applies them in llama.cpp's default chain order: penalties -> top_k -> top_p
    -> min_p -> temperature -> draw.

    Attributes:
        max_tokens: most tokens to generate (>= 1); None generates until the context is full.
            Default 256.
        temperature: divides the logits before the draw (>= 0); 0 means greedy (argmax).
            Default 0.8.
        top_k: keep only the k most likely tokens (>= 0); 0 disables. Default 40.
        top_p: nucleus sampling: keep the smallest set of most likely tokens whose probability
            adds up to at least top_p (0 < top_p <= 1); 1 disables. Default 0.95.
        min_p: drop tokens whose probability is below min_p times that of the most likely
            token (0 <= min_p <= 1); 0 disables. Default 0.05.
        repetition_penalty: llama.cpp's repeat_penalty (> 0); a token seen in the penalty
            window has a positive logit divided by it, a negative one multiplied; 1 disables.
            Default 1.0.
        presence_penalty: subtracted once from the logit of every token seen in the window
            (-2 <= x <= 2, OpenAI's range). Default 0.0.
        frequency_penalty: subtracted from a token's logit once per time it appears in the
            window (-2 <= x <= 2, OpenAI's range). Default 0.0.
        penalty_last_n: how many of the most recent tokens, prompt included, the three
            penalties look at (llama.cpp's repeat_last_n); 0 disables them, -1 means the whole
            sequence. Default 64.
        seed: seeds this request's random generator so its draws repeat (0 <= seed < 2**64);
            None draws a fresh seed from the OS. Default None.
        stop: strings that end generation when they appear in the output. A single string or
            a list is accepted and stored as a tuple; empty strings are rejected. Default ().
        stop_token_ids: token ids that end generation, besides the model's end-of-sequence
            tokens. Default ().
        ignore_eos: keep generating past end-of-sequence tokens. Default False.
        logprobs: how many top log-probabilities to return with each token (0..20); None
            returns none. Default None.
        logit_bias: token id -> value added to that token's logit before anything else
            (-100..100, OpenAI's range; -100 in practice bans a token, 100 forces it). A dict
            is accepted and stored as sorted (id, bias) pairs. Default none.
        grammar: a `Grammar` the generated text must follow (JSON, a JSON Schema, a regex or a
            grammar); generation ends when the grammar is complete. Default None.
    """

    max_tokens: int | None = 256
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: Grammar | None = None

    def __post_init__(self) -> None:
        # Each check also normalizes: ints given for floats become floats, lists become tuples.
        if self.max_tokens is not None:
            self._int("max_tokens", ">= 1, or None to stop only when the context is full", 1)
        self._float("temperature", ">= 0 (0 = greedy)", 0.0)
        self._int("top_k", ">= 0 (0 = disabled)", 0)
        self._float("top_p", "in (0, 1] (1 = disabled)", 0.0, 1.0, lo_open=True)
        self._float("min_p", "in [0, 1] (0 = disabled)", 0.0, 1.0)
        self._float("repetition_penalty", "> 0 (1 = disabled)", 0.0, lo_open=True)
        self._float("presence_penalty", "in [-2, 2] (0 = disabled)", -2.0, 2.0)
        self._float("frequency_penalty", "in [-2, 2] (0 = disabled)", -2.0, 2.0)
        self._int("penalty_last_n", ">= -1 (0 = disabled, -1 = whole sequence)", -1)
        if self.seed is not None:
            self._int("seed", "in [0, 2**64 - 1], or None for a random seed", 0, MAX_SEED)
        object.__setattr__(self, "stop", _stop_strings(self.stop))
        object.__setattr__(self, "stop_token_ids", _token_ids(self.stop_token_ids))
        if not isinstance(self.ignore_eos, bool):
            got = f"{type(self.ignore_eos).__name__} {self.ignore_eos!r}"
            raise InvalidParameterError("ignore_eos", f"must be true or false, got {got}")
        if self.logprobs is not None:
            self._int("logprobs", f"in [0, {MAX_LOGPROBS}], or None", 0, MAX_LOGPROBS)
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))
        if self.grammar is not None and not isinstance(self.grammar, Grammar):
            got = type(self.grammar).__name__
            raise InvalidParameterError("grammar", f"must be a Grammar or None, got {got}")

    def _int(self, name: str, allowed: str, lo: int, hi: int | None = None) -> None:
        value = _check_int(name, getattr(self, name), allowed, lo, hi)
        object.__setattr__(self, name, value)  # the dataclass is frozen

    def _float(self, name: str, allowed: str, lo: float, hi: float | None = None, *, lo_open: bool = False) -> None:
        value = getattr(self, name)
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            got = f"{type(value).__name__} {value!r}"
            raise InvalidParameterError(name, f"must be a number {allowed}, got {got}")
        value = float(value)
        if not math.isfinite(value):
            raise InvalidParameterError(name, f"must be a finite number {allowed}, got {value}")
        if value < lo or (lo_open and value == lo) or (hi is not None and value > hi):
            raise InvalidParameterError(name, f"must be {allowed}, got {value}")
        object.__setattr__(self, name, value)

    @classmethod
    def greedy(cls, **kw: Any) -> SamplingParams:
        """Parameters that always pick the most likely token (temperature 0).

        Penalties still apply; the other fields take their defaults unless given in `kw`.
        """
        if kw.get("temperature", 0) != 0:
            message = "greedy() fixes it at 0; build SamplingParams(...) for another value"
            raise InvalidParameterError("temperature", message)
        return cls(**{**kw, "temperature": 0.0})

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed, validated like a new instance."""
        return dataclasses.replace(self, **changes)

    @property
    def is_greedy(self) -> bool:
        """True when the choice is deterministic: temperature 0 or top_k 1."""
        return self.temperature == 0.0 or self.top_k == 1


def _check_int(name: str, value: object, allowed: str, lo: int, hi: int | None = None) -> int:
    # bool is an int subclass, but True as top_k is almost surely a mistake.
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        got = f"{type(value).__name__} {value!r}"
        raise InvalidParameterError(name, f"must be an integer {allowed}, got {got}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        raise InvalidParameterError(name, f"must be {allowed}, got {value}")
    return value


def _stop_strings(stop: object) -> tuple[str, ...]:
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)):
        got = type(stop).__name__
        raise InvalidParameterError("stop", f"must be a string or a list of strings, got {got}")
    for s in stop:
        if not isinstance(s, str):
            got = f"{type(s).__name__} {s!r}"
            raise InvalidParameterError("stop", f"must contain only strings, got {got}")
        if not s:
            message = "must not contain empty strings (they would match at once)"
            raise InvalidParameterError("stop", message)
    return tuple(stop)


def _token_ids(ids: object) -> tuple[int, ...]:
    if not isinstance(ids, (list, tuple)):
        got = type(ids).__name__
        raise InvalidParameterError("stop_token_ids", f"must be a list of token ids, got {got}")
    return tuple(_check_int("stop_token_ids", i, "(a token id, >= 0)", 0) for i in ids)


def _logit_bias(bias: object) -> tuple[tuple[int, float], ...]:
    items = bias.items() if isinstance(bias, Mapping) else bias
    if not isinstance(items, (list, tuple, type({}.items()))):
        got = type(bias).__name__
        raise InvalidParameterError("logit_bias", f"must map token ids to numbers, got {got}")
    pairs: dict[int, float] = {}
    item: object
    for item in items:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise InvalidParameterError("logit_bias", f"must map token ids to numbers, got {item!r}")
        token = _check_int("logit_bias", item[0], ">= 0 (keys are token ids)", 0)
        value = item[1]
        number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
        if not math.isfinite(number) or abs(number) > MAX_LOGIT_BIAS:
            raise InvalidParameterError(
                "logit_bias", f"values must be numbers in [-100, 100], got {value!r} for token {token}"
            )
        pairs[token] = number
    return tuple(sorted(pairs.items()))
