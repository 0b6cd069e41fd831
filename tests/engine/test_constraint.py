"""Structured output and logit_bias, checked against what they promise, computed independently:
the allowed-token mask against a brute-force prefix check over the vocabulary, generated text
against `re.fullmatch` / `json.loads` and the schema's own rules, a biased greedy token against
the argmax of the model's logits with the bias added by hand."""

from __future__ import annotations

import json
import re

import pytest
import torch

from llamita import SamplingParams
from llamita.engine.constraint import TokenConstraint
from llamita.engine.llm_engine import LLMEngine
from llamita.errors import InvalidParameterError
from llamita.sampling_params import Grammar

PERSON = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "age", "city"],
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"enum": ["Madrid", "Lima", "Bogotá"]},
    },
}


def test_first_mask_is_exactly_the_tokens_that_start_a_word(llm_f32):
    """For the regex (yes|no|maybe) the first allowed tokens are those whose text is a nonempty
    prefix of one of the words: computed here by brute force over every token."""
    tok = llm_f32.tokenizer
    words = ("yes", "no", "maybe")
    constraint = TokenConstraint(Grammar("regex", "(yes|no|maybe)"), tok, tok.vocab_size)
    allowed = set(constraint.allowed().nonzero().squeeze(-1).tolist())
    expected = {
        i
        for i in range(tok.vocab_size)
        if not tok.is_special(i)
        and tok.token_bytes(i)
        and any(w.encode().startswith(tok.token_bytes(i)) for w in words)
    }
    assert allowed == expected
    assert len(expected) >= 3


def test_mask_after_a_prefix_allows_only_continuations(llm_f32):
    tok = llm_f32.tokenizer
    constraint = TokenConstraint(Grammar("regex", "(yes|no|maybe)"), tok, tok.vocab_size)
    (ma,) = tok.encode("ma")  # one token in this vocabulary
    constraint.consume(ma)
    allowed = set(constraint.allowed().nonzero().squeeze(-1).tolist())
    expected = {
        i
        for i in range(tok.vocab_size)
        if not tok.is_special(i) and tok.token_bytes(i) and b"ybe".startswith(tok.token_bytes(i))
    }
    assert allowed == expected
    assert not constraint.done


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regex_output_matches_even_when_sampling_hot(llm_f32, seed):
    pattern = r"[0-9]{3}-[A-Z]{2}"
    params = SamplingParams(
        temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed, max_tokens=20, grammar=Grammar("regex", pattern)
    )
    out = llm_f32.generate("My code is", params=params)
    assert re.fullmatch(pattern, out.text), out.text
    assert out.finish_reason == "stop"


def _check_person(value: object) -> None:
    assert isinstance(value, dict) and set(value) == {"name", "age", "city"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 20
    assert isinstance(value["age"], int) and 0 <= value["age"] <= 120
    assert value["city"] in ("Madrid", "Lima", "Bogotá")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_chat_output_parses_and_conforms(llm_f32, temperature):
    params = SamplingParams(temperature=temperature, seed=3, max_tokens=80, grammar=Grammar.json_schema(PERSON))
    out = llm_f32.chat([{"role": "user", "content": "Describe a person as JSON."}], params)
    assert out.finish_reason == "stop", out.text
    _check_person(json.loads(out.text))


def test_json_object_output_is_an_object(llm_f32):
    params = SamplingParams(temperature=0, max_tokens=60, grammar=Grammar.json_object())
    out = llm_f32.chat([{"role": "user", "content": "List three colors in JSON."}], params)
    if out.finish_reason == "length":  # a long object: what was written must still be a prefix
        assert out.text.startswith("{")
    else:
        assert isinstance(json.loads(out.text), dict)


def test_unconstrained_requests_in_the_batch_are_unchanged(llm_f32):
    """A grammar request beside plain ones: the plain ones give their solo outputs, the
    constrained one its own solo output."""
    plain = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    constrained = SamplingParams(temperature=0, max_tokens=40, grammar=Grammar.json_schema(PERSON))
    prompts = [llm_f32.encode_prompt(p) for p in ("The capital of France is", "Person:", "1, 2, 3,")]
    params = [plain, constrained, plain]
    solo = [llm_f32.generate(prompt_token_ids=ids, params=p).token_ids for ids, p in zip(prompts, params)]
    engine = LLMEngine(llm_f32.loaded, kv_cache_tokens=1024)
    for i, (ids, p) in enumerate(zip(prompts, params)):
        engine.add_request(str(i), ids, p)
    got: dict[str, list[int]] = {str(i): [] for i in range(3)}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id] += out.token_ids
    assert [got[str(i)] for i in range(3)] == solo
    _check_person(json.loads(llm_f32.tokenizer.decode(solo[1])))


@pytest.mark.parametrize(
    "grammar",
    [
        Grammar("regex", "(unclosed"),
        Grammar("lark", "start: undefined_rule"),
        Grammar.json_schema({"type": "no-such-type"}),
    ],
)
def test_a_grammar_that_does_not_compile_is_a_parameter_error(llm_f32, grammar):
    with pytest.raises(InvalidParameterError, match="grammar"):
        llm_f32.generate("x", params=SamplingParams(grammar=grammar))


def test_grammar_and_schema_arguments_are_checked():
    with pytest.raises(InvalidParameterError, match="json_schema"):
        Grammar.json_schema("{not json")
    with pytest.raises(InvalidParameterError, match="json_schema"):
        Grammar.json_schema("[1, 2]")
    with pytest.raises(InvalidParameterError, match="kind"):
        Grammar("yaml", "a: 1")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="grammar"):
        SamplingParams(grammar="json")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- logit_bias


def _next_logits(llm, prompt: str) -> torch.Tensor:
    ids = llm.encode_prompt(prompt)
    with torch.inference_mode():
        return llm.loaded.model(torch.tensor([ids]))[0, -1, : llm.tokenizer.vocab_size].float()


def test_logit_bias_moves_the_greedy_choice_as_computed_by_hand(llm_f32):
    prompt = "The capital of France is"
    logits = _next_logits(llm_f32, prompt)
    top2 = torch.topk(logits, 2).indices.tolist()
    gap = float(logits[top2[0]] - logits[top2[1]])
    # Push the runner-up just past the winner; ban the winner in another request.
    bias = {top2[1]: gap + 0.5}
    expected = int(torch.argmax(logits + torch.zeros_like(logits).index_fill(0, torch.tensor([top2[1]]), gap + 0.5)))
    assert expected == top2[1]
    out = llm_f32.generate(prompt, params=SamplingParams(temperature=0, max_tokens=1, logit_bias=bias))
    assert out.token_ids == [top2[1]]
    banned = llm_f32.generate(prompt, params=SamplingParams(temperature=0, max_tokens=1, logit_bias={top2[0]: -100}))
    assert banned.token_ids == [top2[1]]
    plain = llm_f32.generate(prompt, params=SamplingParams(temperature=0, max_tokens=1))
    assert plain.token_ids == [top2[0]]


def test_a_banned_token_never_appears(llm_f32):
    """Greedy, the prompt's continuation uses " the"; banned, neither the greedy nor a sampled
    continuation (whole distribution) does."""
    space_the = llm_f32.tokenizer.encode(" the")
    assert len(space_the) == 1
    prompt = "The history of the city of Rome begins with"
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    assert space_the[0] in llm_f32.generate(prompt, params=greedy).token_ids
    ban = {space_the[0]: -100}
    assert space_the[0] not in llm_f32.generate(prompt, params=greedy.replace(logit_bias=ban)).token_ids
    hot = SamplingParams(
        temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=5, max_tokens=16, ignore_eos=True, logit_bias=ban
    )
    assert space_the[0] not in llm_f32.generate(prompt, params=hot).token_ids


def test_logit_bias_ids_are_checked_against_the_vocabulary(llm_f32):
    with pytest.raises(InvalidParameterError, match="logit_bias"):
        llm_f32.generate("x", params=SamplingParams(logit_bias={10**7: 1.0}))
    for bad in ({-1: 1.0}, {1: 101}, {1: float("nan")}, {1: True}, "x"):
        with pytest.raises(InvalidParameterError, match="logit_bias"):
            SamplingParams(logit_bias=bad)


# ------------------------------------------------------------------------------- forced tool calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}},
            "required": ["city"],
        },
    },
}


@pytest.mark.parametrize("seed", [0, 1])
def test_forced_tool_call_parses_with_only_the_declared_arguments(llm_f32, seed):
    from llamita.engine.tool_grammar import tool_call_grammar

    grammar = tool_call_grammar(llm_f32.tokenizer, [WEATHER])
    params = SamplingParams(temperature=1.0, seed=seed, max_tokens=40, grammar=grammar)
    out = llm_f32.chat([{"role": "user", "content": "Is it raining in Lima?"}], params, tools=[WEATHER])
    assert out.finish_reason == "tool_calls" and out.text == ""
    for call in out.tool_calls:
        assert call["function"]["name"] == "get_weather"
        assert set(json.loads(call["function"]["arguments"])) == {"city"}


def test_a_named_function_must_be_offered(llm_f32):
    from llamita.engine.tool_grammar import tool_call_grammar

    with pytest.raises(InvalidParameterError, match="get_time"):
        tool_call_grammar(llm_f32.tokenizer, [WEATHER], "get_time")
    with pytest.raises(InvalidParameterError, match="no tools"):
        tool_call_grammar(llm_f32.tokenizer, [])


def test_unbounded_numbers_stop_at_16_integral_digits(llm_f32):
    """A schema number without bounds gets llama.cpp's 16-digit limit: after 16 digits no
    digit token is allowed, and bounds the schema gives are kept."""
    tok = llm_f32.tokenizer
    digits = [i for i in range(tok.vocab_size) if tok.token_bytes(i).isdigit()]
    constraint = TokenConstraint(Grammar.json_schema({"type": "integer"}), tok, tok.vocab_size)
    for token in tok.encode("1" * 16):
        constraint.consume(token)
    assert not constraint.allowed()[digits].any()
    from llamita.engine.constraint import bound_numbers

    assert bound_numbers({"type": "object", "properties": {"x": {"type": "number", "maximum": 5}}}) == {
        "type": "object",
        "properties": {"x": {"type": "number", "maximum": 5, "minimum": -1e16}},
    }
