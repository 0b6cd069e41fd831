"""OpenAI and Ollama request fields -> SamplingParams, each in one function.

Defaults are SamplingParams' (llama.cpp's and Ollama's: temperature 0.8, top_k 40, top_p 0.95,
min_p 0.05), not OpenAI's, so a model answers here as it does under llama.cpp's server. Range
checks are SamplingParams' own; a field we do not implement yet is refused with a 400, never
silently ignored.
"""

from __future__ import annotations

from typing import Any

from llamita.errors import InvalidParameterError
from llamita.sampling_params import (
    OLLAMA_HARDWARE_OPTIONS,
    OLLAMA_OFF_VALUES,
    OLLAMA_OPTIONS,
    Grammar,
    SamplingParams,
    ollama_num_predict,
)
from llamita.serving.errors import APIError, not_supported
from llamita.serving.request_body import field

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's legacy /v1/completions default

# OpenAI name -> SamplingParams name, for the fields that pass straight through.
_OPENAI_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
    "stop": "stop",
    "stop_token_ids": "stop_token_ids",
    "ignore_eos": "ignore_eos",
}

# Ollama's option tables are shared with the Modelfile's PARAMETER (library/modelfile.py).
_OLLAMA_OPTIONS, _OLLAMA_HARDWARE_OPTIONS, _OLLAMA_OFF_VALUES = (
    OLLAMA_OPTIONS,
    OLLAMA_HARDWARE_OPTIONS,
    OLLAMA_OFF_VALUES,
)


def openai_sampling_params(
    body: dict[str, Any], *, chat: bool, defaults: dict[str, Any] | None = None
) -> SamplingParams:
    """SamplingParams of a /v1/chat/completions (chat=True) or /v1/completions body; `defaults`
    (a created model's PARAMETERs, SamplingParams names) stand where the body says nothing."""
    defaults = defaults or {}
    kw: dict[str, Any] = {
        **defaults,
        **{ours: body[theirs] for theirs, ours in _OPENAI_FIELDS.items() if body.get(theirs) is not None},
    }
    if body.get("logit_bias") is not None:
        kw["logit_bias"] = _logit_bias(body["logit_bias"])
    kw["grammar"] = openai_grammar(body)
    if "penalty_last_n" in body or "repeat_last_n" in body:
        kw["penalty_last_n"] = body.get("penalty_last_n", body.get("repeat_last_n"))
    kw["max_tokens"] = _max_tokens(body, chat=chat, default=defaults.get("max_tokens"))
    kw["logprobs"] = _openai_logprobs(body, chat=chat)
    return _build(kw)


def _max_tokens(body: dict[str, Any], *, chat: bool, default: int | None = None) -> int | None:
    """max_completion_tokens or max_tokens, or llama.cpp's name `n_predict` (-1: no limit).
    Untold, `default` (a created model's num_predict) if any, else chat completions run to the
    end of the context and legacy completions stop at 16."""
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    given = [body[n] for n in names if body.get(n) is not None]
    n_predict = body.get("n_predict")
    if n_predict is not None:
        if given and given[0] != n_predict:
            raise APIError(400, f"'n_predict' and '{names[-1]}' say different things; give one", param="n_predict")
        limit: int | None = _num_predict(n_predict)
        return limit
    if given:
        first: int = given[0]
        return first
    if default is not None:
        return default
    return None if chat else COMPLETIONS_DEFAULT_MAX_TOKENS


def _logit_bias(value: Any) -> dict[int, Any]:
    """OpenAI's logit_bias: a JSON object whose keys are token ids written as strings."""
    if not isinstance(value, dict):
        raise APIError(400, "'logit_bias' must be an object mapping token ids to numbers", param="logit_bias")
    out = {}
    for key, bias in value.items():
        try:
            out[int(key)] = bias
        except (TypeError, ValueError):
            raise APIError(400, f"'logit_bias' keys must be token ids, got {key!r}", param="logit_bias") from None
    return out


def openai_grammar(body: dict[str, Any]) -> Grammar | None:
    """The grammar an OpenAI body asks for: `response_format` json_object (with llama.cpp's
    optional `schema`) or json_schema, or llama.cpp's server extensions `json_schema` (a JSON
    Schema object) and `grammar` (GBNF text). At most one of the three."""
    response_format = body.get("response_format")
    if isinstance(response_format, str):  # some clients send the bare type
        response_format = {"type": response_format}
    if response_format is not None and not isinstance(response_format, dict):
        raise APIError(400, "'response_format' must be an object", param="response_format")
    response_format = response_format or {}
    kind = field(response_format, "type", str, "text", where="response_format.")
    grammar = field(body, "grammar", str)
    top_schema = field(body, "json_schema", dict)
    given = [
        name
        for name, on in (
            ("response_format", kind != "text"),
            ("json_schema", top_schema is not None),
            ("grammar", grammar is not None),
        )
        if on
    ]
    if len(given) > 1:
        raise APIError(
            400,
            f"give one of 'response_format', 'json_schema' and 'grammar', not {' and '.join(repr(g) for g in given)}",
            param=given[-1],
        )
    try:
        if grammar is not None:
            return Grammar("gbnf", grammar)
        if top_schema is not None:
            return Grammar.json_schema(top_schema)
        if kind == "text":
            return None
        if kind == "json_object":
            schema = field(response_format, "schema", dict, where="response_format.")
            return Grammar.json_object() if schema is None else Grammar.json_schema(schema)
        if kind == "json_schema":
            spec = field(response_format, "json_schema", dict, required=True, where="response_format.")
            schema = spec.get("schema")
            if not isinstance(schema, dict):
                raise APIError(
                    400,
                    "'response_format.json_schema.schema' must be a JSON Schema object",
                    param="response_format.json_schema.schema",
                )
            return Grammar.json_schema(schema)
    except InvalidParameterError as e:
        raise APIError(400, str(e), param=given[0] if given else "response_format") from None
    raise APIError(
        400,
        f"'response_format.type' must be 'text', 'json_object' or 'json_schema', got {kind!r}",
        param="response_format.type",
    )


def ollama_grammar(value: Any) -> Grammar | None:
    """Ollama's `format`: "json" or a JSON Schema object."""
    if value in (None, ""):
        return None
    if value == "json":
        return Grammar.json_object()
    if isinstance(value, dict):
        try:
            return Grammar.json_schema(value)
        except InvalidParameterError as e:
            raise APIError(400, str(e), param="format") from None
    raise APIError(400, f"'format' must be \"json\" or a JSON Schema object, got {value!r}", param="format")


def _openai_logprobs(body: dict[str, Any], *, chat: bool) -> int | None:
    """How many alternatives per token to report (None: no logprobs); the ranges are the
    request models' (serving/protocol.py)."""
    if chat:
        wanted, top = body.get("logprobs"), body.get("top_logprobs")
        if top is not None and not wanted:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        return (top or 0) if wanted else None
    return body.get("logprobs")  # legacy completions: the number of alternatives per token


def choice_count(body: dict[str, Any]) -> int:
    """The body's `n` (its range is the request model's), 1 when absent."""
    return body.get("n") or 1


def per_choice(params: SamplingParams, n: int) -> list[SamplingParams]:
    """Parameters of each of n choices: with a seed, choice i draws with seed + i, so the
    choices differ but the whole answer repeats."""
    if params.seed is None:
        return [params] * n
    return [params.replace(seed=(params.seed + i) % 2**64) for i in range(n)]


def ollama_sampling_params(options: dict[str, Any], defaults: dict[str, Any] | None = None) -> SamplingParams:
    """SamplingParams of an Ollama `options` object (num_ctx is the route's business);
    `defaults` (a created model's PARAMETERs, SamplingParams names) stand where it says nothing."""
    kw: dict[str, Any] = dict(defaults or {})
    for name, value in options.items():
        if value is None or name in _OLLAMA_HARDWARE_OPTIONS or name == "num_ctx":
            continue
        if name in _OLLAMA_OPTIONS:
            kw[_OLLAMA_OPTIONS[name]] = value
        elif name == "num_predict":
            kw["max_tokens"] = _num_predict(value)
        elif name in _OLLAMA_OFF_VALUES:
            off = _OLLAMA_OFF_VALUES[name]
            if off is not None and value != off:
                raise not_supported(f"options.{name}", f"{name}={value}")
        else:
            raise not_supported(f"options.{name}", "this option")
    kw.setdefault("max_tokens", None)  # Ollama generates until the end of the turn by default
    return _build(kw)


_num_predict = ollama_num_predict


def _build(kw: dict[str, Any]) -> SamplingParams:
    try:
        return SamplingParams(**kw)
    except InvalidParameterError as e:
        raise APIError(400, str(e), param=e.name) from None
