"""Fields of other servers that clients send to OpenAI-style routes (issue 30 item 6): llama.cpp's
`n_predict`, top-level `json_schema` and `response_format.schema`, and vLLM's assistant prefill
(`continue_final_message`). Each either works, checked against LLM (the static-cache path), or is
refused with a 400 naming it; none is silently ignored."""

from __future__ import annotations

import json

import httpx
import pytest

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
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json={"model": MODEL_NAME, **body}, timeout=120)


def _error(r: httpx.Response, param: str) -> dict:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    return error


def test_n_predict_is_max_tokens(server, llm_f32):
    want = llm_f32.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=5))
    r = _post(server, "/v1/completions", {"prompt": "Once upon a time", "temperature": 0, "n_predict": 5}).json()
    assert r["choices"][0]["text"] == want.text and r["usage"]["completion_tokens"] == 5
    chat = _post(server, "/v1/chat/completions", {"messages": QUESTION, "temperature": 0, "n_predict": 3}).json()
    assert chat["usage"]["completion_tokens"] == 3
    _error(_post(server, "/v1/completions", {"prompt": "x", "n_predict": 5, "max_tokens": 6}), "n_predict")


@pytest.mark.parametrize(
    "extra", [{"json_schema": PERSON}, {"response_format": {"type": "json_object", "schema": PERSON}}]
)
def test_json_schema_outside_response_format_json_schema(server, llm_f32, extra):
    r = _post(server, "/v1/chat/completions", {"messages": ASK_PERSON, "temperature": 0, "max_tokens": 60, **extra})
    text = r.json()["choices"][0]["message"]["content"]
    want = llm_f32.chat(ASK_PERSON, SamplingParams(temperature=0, max_tokens=60, grammar=Grammar.json_schema(PERSON)))
    assert text == want.text
    assert set(json.loads(text)) == {"name", "age"}


def test_two_grammars_are_refused(server):
    both = {"messages": QUESTION, "json_schema": PERSON, "response_format": {"type": "json_object"}}
    assert (
        "not 'response_format' and 'json_schema'"
        in _error(_post(server, "/v1/chat/completions", both), "json_schema")["message"]
    )
    _error(
        _post(server, "/v1/completions", {"prompt": "x", "json_schema": PERSON, "grammar": 'root ::= "a"'}), "grammar"
    )
    _error(_post(server, "/v1/completions", {"prompt": "x", "json_schema": "not a schema"}), "json_schema")


def test_continue_final_message_continues_the_greedy_answer(server, llm_f32):
    # Greedy decoding is deterministic: prefilling the start of the model's own greedy answer
    # must make it write the rest of that same answer.
    full = llm_f32.chat(QUESTION, SamplingParams(temperature=0, max_tokens=16))
    head_ids = full.token_ids[:4]
    head = llm_f32.tokenizer.decode(head_ids)
    assert full.text.startswith(head) and len(full.text) > len(head)
    r = _post(
        server,
        "/v1/chat/completions",
        {
            "messages": QUESTION + [{"role": "assistant", "content": head}],
            "continue_final_message": True,
            "add_generation_prompt": False,
            "temperature": 0,
            "max_tokens": 16 - len(head_ids),
        },
    ).json()
    assert r["choices"][0]["message"]["content"] == full.text[len(head) :]
    assert r["usage"]["completion_tokens"] == len(full.token_ids) - len(head_ids)
    assert r["choices"][0]["finish_reason"] == full.finish_reason
    # The prompt is the question's prompt with the head's tokens after it.
    assert r["usage"]["prompt_tokens"] == len(full.prompt_token_ids) + len(head_ids)


def test_prefill_misuse_is_refused(server):
    _error(
        _post(server, "/v1/chat/completions", {"messages": QUESTION, "continue_final_message": True}),
        "continue_final_message",
    )
    _error(
        _post(server, "/v1/chat/completions", {"messages": QUESTION, "add_generation_prompt": False}),
        "add_generation_prompt",
    )
    _error(
        _post(
            server,
            "/v1/chat/completions",
            {
                "messages": QUESTION + [{"role": "assistant", "content": "Paris"}],
                "continue_final_message": True,
                "add_generation_prompt": True,
            },
        ),
        "add_generation_prompt",
    )
