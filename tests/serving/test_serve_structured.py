"""Structured output over HTTP with the real model: response_format json_object / json_schema,
Ollama's `format`, logit_bias and tool_choice required / named, checked against the schema's
own rules and against LLM (the static-cache path) given the same grammar or bias."""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest

from llamita.engine.tool_grammar import tool_call_grammar
from llamita.sampling_params import Grammar, SamplingParams

from serving_helpers import MODEL_NAME

PERSON = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "age"],
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
}
ASK_PERSON = [{"role": "user", "content": "Invent a person and describe them as JSON."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "required": ["city"],
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "required": ["tz"],
            "properties": {"tz": {"type": "string", "maxLength": 20}},
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "Is it raining in Lima?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", timeout=120, max_retries=0)


def _person_ok(value):
    assert isinstance(value, dict) and set(value) == {"name", "age"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 16
    assert isinstance(value["age"], int) and 0 <= value["age"] <= 120


def test_json_schema_equals_llm_with_the_same_grammar(client, llm_f32):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK_PERSON, temperature=0, max_tokens=60, response_format=fmt
    )
    text = r.choices[0].message.content
    _person_ok(json.loads(text))
    assert r.choices[0].finish_reason == "stop"
    want = llm_f32.chat(ASK_PERSON, SamplingParams(temperature=0, max_tokens=60, grammar=Grammar.json_schema(PERSON)))
    assert text == want.text
    # Streamed, the pieces add up to the same JSON.
    chunks = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK_PERSON, temperature=0, max_tokens=60, response_format=fmt, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text


def test_json_object_sampled_is_an_object(client):
    r = client.chat.completions.create(
        model=MODEL_NAME,
        messages=ASK_PERSON,
        temperature=1.0,
        seed=7,
        n=2,
        max_tokens=80,
        response_format={"type": "json_object"},
    )
    for choice in r.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:
            assert choice.message.content.startswith("{")


def test_ollama_format_json_and_schema(server):
    client = ollama.Client(host=server.url, timeout=120)
    r = client.chat(model=MODEL_NAME, messages=ASK_PERSON, format=PERSON, options={"temperature": 0, "num_predict": 60})
    _person_ok(json.loads(r.message.content))
    r = client.generate(
        model=MODEL_NAME,
        prompt="A JSON object about a cat:",
        format="json",
        options={"temperature": 0, "num_predict": 40},
    )
    assert r.response.lstrip().startswith("{")


def test_logit_bias_equals_llm_with_the_same_bias(client, llm_f32):
    plain = llm_f32.chat(ASK_WEATHER, SamplingParams(temperature=0, max_tokens=3))
    banned = {plain.token_ids[0]: -100}
    want = llm_f32.chat(ASK_WEATHER, SamplingParams(temperature=0, max_tokens=3, logit_bias=banned))
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK_WEATHER, temperature=0, max_tokens=3, logit_bias={str(plain.token_ids[0]): -100}
    )
    assert r.choices[0].message.content == want.text != plain.text


def test_tool_choice_required_and_named(client, llm_f32, server):
    tools = [WEATHER, TIME]
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK_WEATHER, tools=tools, tool_choice="required", temperature=0, max_tokens=80
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and all(
        c.function.name in ("get_weather", "get_time") for c in choice.message.tool_calls
    )
    for c in choice.message.tool_calls:
        args = json.loads(c.function.arguments)
        assert set(args) <= {"city", "unit", "tz"} and ("city" in args or "tz" in args)
    # The same calls as LLM given the same grammar.
    grammar = tool_call_grammar(llm_f32.tokenizer, tools)
    want = llm_f32.chat(ASK_WEATHER, SamplingParams(temperature=0, max_tokens=80, grammar=grammar), tools=tools)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in want.tool_calls] == [
        (c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls
    ]

    named = {"type": "function", "function": {"name": "get_time"}}
    chunks = list(
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=ASK_WEATHER,
            tools=tools,
            tool_choice=named,
            temperature=0,
            max_tokens=80,
            stream=True,
        )
    )
    pieces = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert pieces[0].function.name == "get_time" and len({p.index for p in pieces}) == 1
    assert set(json.loads("".join(p.function.arguments for p in pieces))) == {"tz"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "nope"}}},
            "response_format.json_schema.schema",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
            "grammar",
        ),
        ({"grammar": "root ::= (("}, "grammar"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 500}}, "logit_bias.5"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [WEATHER]}, "tool_choice"),
        ({"tool_choice": "required", "tools": [WEATHER], "response_format": {"type": "json_object"}}, "tool_choice"),
    ],
)
def test_bad_structured_output_requests_are_400(server, body, param):
    r = httpx.post(
        server.url + "/v1/chat/completions",
        timeout=60,
        json={"model": MODEL_NAME, "messages": ASK_WEATHER, "max_tokens": 2, **body},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_openai_parse_with_a_pydantic_model(client):
    """The openai client's structured-output helper: it sends the model's strict JSON Schema
    and parses the answer back into the pydantic class."""
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=20)
        country: str = Field(max_length=20)
        population_millions: float

    r = client.chat.completions.parse(
        model=MODEL_NAME,
        temperature=0,
        max_tokens=60,
        response_format=City,
        messages=[{"role": "user", "content": "Describe Madrid."}],
    )
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and len(city.name) <= 20
