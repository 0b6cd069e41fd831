"""SamplingParams: defaults, normalization, and one rejection per way a field can be wrong."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math

import pytest

import llamita.sampling_params as sampling_params_module
from llamita.errors import InvalidParameterError
from llamita.sampling_params import SamplingParams

# (field, bad value, a phrase the message must contain)
BAD_VALUES = [
    ("max_tokens", 0, ">= 1"),
    ("max_tokens", -5, ">= 1"),
    ("max_tokens", 1.0, "integer"),
    ("max_tokens", True, "integer"),
    ("max_tokens", "10", "integer"),
    ("temperature", -0.1, ">= 0"),
    ("temperature", math.nan, "finite"),
    ("temperature", math.inf, "finite"),
    ("temperature", "hot", "number"),
    ("temperature", True, "number"),
    ("temperature", None, "number"),
    ("top_k", -1, ">= 0"),
    ("top_k", 1.5, "integer"),
    ("top_k", 40.0, "integer"),
    ("top_k", True, "integer"),
    ("top_p", 0.0, "(0, 1]"),
    ("top_p", -0.5, "(0, 1]"),
    ("top_p", 1.01, "(0, 1]"),
    ("top_p", math.nan, "finite"),
    ("top_p", "0.9", "number"),
    ("min_p", -0.01, "[0, 1]"),
    ("min_p", 1.5, "[0, 1]"),
    ("min_p", -math.inf, "finite"),
    ("min_p", False, "number"),
    ("repetition_penalty", 0.0, "> 0"),
    ("repetition_penalty", -1.1, "> 0"),
    ("repetition_penalty", math.inf, "finite"),
    ("repetition_penalty", math.nan, "finite"),
    ("presence_penalty", 2.5, "[-2, 2]"),
    ("presence_penalty", -2.01, "[-2, 2]"),
    ("presence_penalty", math.nan, "finite"),
    ("frequency_penalty", 3, "[-2, 2]"),
    ("frequency_penalty", -2.5, "[-2, 2]"),
    ("frequency_penalty", math.inf, "finite"),
    ("penalty_last_n", -2, ">= -1"),
    ("penalty_last_n", 64.0, "integer"),
    ("penalty_last_n", True, "integer"),
    ("seed", -1, "2**64"),
    ("seed", 2**64, "2**64"),
    ("seed", 1.0, "integer"),
    ("seed", True, "integer"),
    ("stop", "", "empty"),
    ("stop", ["end", ""], "empty"),
    ("stop", ["end", 3], "strings"),
    ("stop", 7, "list of strings"),
    ("stop", {"end"}, "list of strings"),
    ("stop_token_ids", [-1], ">= 0"),
    ("stop_token_ids", [2, True], "integer"),
    ("stop_token_ids", [1.0], "integer"),
    ("stop_token_ids", 2, "list"),
    ("ignore_eos", 1, "true or false"),
    ("ignore_eos", "yes", "true or false"),
    ("ignore_eos", None, "true or false"),
    ("logprobs", -1, "[0, 20]"),
    ("logprobs", 21, "[0, 20]"),
    ("logprobs", 5.0, "integer"),
    ("logprobs", True, "integer"),
    ("logit_bias", {-1: 1.0}, ">= 0"),
    ("logit_bias", {1: 101}, "[-100, 100]"),
    ("logit_bias", {1: float("inf")}, "[-100, 100]"),
    ("logit_bias", {1: True}, "[-100, 100]"),
    ("logit_bias", {"1": 1.0}, "integer"),
    ("logit_bias", "x", "map token ids"),
    ("grammar", "json", "Grammar"),
]


@pytest.mark.parametrize(("field", "value", "phrase"), BAD_VALUES)
def test_bad_value_is_rejected_naming_the_field(field: str, value: object, phrase: str) -> None:
    with pytest.raises(InvalidParameterError) as err:
        SamplingParams(**{field: value})
    assert err.value.name == field
    assert f"'{field}'" in str(err.value)
    assert phrase in str(err.value)


def test_every_field_has_a_rejection_test() -> None:
    tested = {field for field, _, _ in BAD_VALUES}
    assert tested == {f.name for f in dataclasses.fields(SamplingParams)}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 1),
        ("max_tokens", None),
        ("temperature", 0.0),
        ("top_k", 0),
        ("top_p", 1.0),
        ("top_p", 1e-6),
        ("min_p", 0.0),
        ("min_p", 1.0),
        ("repetition_penalty", 1e-3),
        ("presence_penalty", -2.0),
        ("frequency_penalty", 2.0),
        ("penalty_last_n", -1),
        ("penalty_last_n", 0),
        ("seed", 0),
        ("seed", 2**64 - 1),
        ("logprobs", 0),
        ("logprobs", 20),
    ],
)
def test_boundary_values_are_accepted(field: str, value: object) -> None:
    assert getattr(SamplingParams(**{field: value}), field) == value


def test_defaults_follow_llama_cpp() -> None:
    p = SamplingParams()
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.min_p) == (256, 0.8, 40, 0.95, 0.05)
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.0, 0.0, 0.0)
    assert (p.penalty_last_n, p.seed, p.stop, p.stop_token_ids) == (64, None, (), ())
    assert (p.ignore_eos, p.logprobs) == (False, None)


def test_stop_accepts_a_string_or_a_list_and_stores_a_tuple() -> None:
    assert SamplingParams(stop="\n\n").stop == ("\n\n",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams(stop_token_ids=[7, 9]).stop_token_ids == (7, 9)


def test_ints_given_for_floats_become_floats() -> None:
    p = SamplingParams(temperature=1, top_p=1, repetition_penalty=2)
    assert type(p.temperature) is float and type(p.top_p) is float
    assert type(p.repetition_penalty) is float


def test_params_are_frozen_and_hashable() -> None:
    p = SamplingParams(stop=["x"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 0.0  # type: ignore[misc]
    assert hash(p) == hash(SamplingParams(stop=("x",)))


def test_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        SamplingParams(16)  # type: ignore[misc]


def test_replace_changes_fields_and_validates() -> None:
    p = SamplingParams(top_k=10)
    q = p.replace(temperature=0.2, stop="END")
    assert (q.top_k, q.temperature, q.stop) == (10, 0.2, ("END",))
    assert p.temperature == 0.8
    with pytest.raises(InvalidParameterError) as err:
        p.replace(top_p=0.0)
    assert err.value.name == "top_p"


def test_greedy() -> None:
    p = SamplingParams.greedy(max_tokens=5, repetition_penalty=1.3)
    assert (p.temperature, p.max_tokens, p.repetition_penalty) == (0.0, 5, 1.3)
    assert p.is_greedy
    assert SamplingParams.greedy(temperature=0).temperature == 0.0
    with pytest.raises(InvalidParameterError) as err:
        SamplingParams.greedy(temperature=0.7)
    assert err.value.name == "temperature"


def test_is_greedy() -> None:
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(top_k=1, temperature=1.5).is_greedy
    assert not SamplingParams().is_greedy
    assert not SamplingParams(top_k=2).is_greedy


def test_imports_only_errors_from_llamita_and_no_torch() -> None:
    tree = ast.parse(inspect.getsource(sampling_params_module))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert "torch" not in {name.split(".")[0] for name in imported}
    assert {name for name in imported if name.startswith("llamita")} == {"llamita.errors"}
