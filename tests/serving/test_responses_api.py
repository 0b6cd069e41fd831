"""OpenAI's Responses API (POST /v1/responses) through the official `openai` client, checked
against LLM.chat on the same conversation (greedy, so both must write the same text), and its
streamed events against the API's documented names and order."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from llamita.sampling_params import SamplingParams

from serving_helpers import MODEL_NAME, ScriptedEngine, start_server, wait_idle

TIMEOUT = 60
INSTRUCTIONS = "Answer in a few words."
QUESTION = "What is the capital of France?"


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def test_text_answer_equals_chat(client, llm_f32, server):
    r = client.responses.create(
        model=MODEL_NAME, instructions=INSTRUCTIONS, input=QUESTION, temperature=0, max_output_tokens=16
    )
    assert wait_idle(server.loop)
    want = llm_f32.chat(
        [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}], _greedy(16)
    )
    assert r.output_text == want.text and r.model == MODEL_NAME and r.object == "response"
    assert r.status == ("completed" if want.finish_reason == "stop" else "incomplete")
    assert r.usage.input_tokens == len(want.prompt_token_ids)
    assert r.usage.output_tokens == len(want.token_ids)
    (message,) = r.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert r.id.startswith("resp_") and r.instructions == INSTRUCTIONS


def test_message_items_with_parts_and_developer_role(client, llm_f32):
    r = client.responses.create(
        model=MODEL_NAME,
        temperature=0,
        max_output_tokens=12,
        input=[
            {"role": "developer", "content": INSTRUCTIONS},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Hello."}, {"type": "input_text", "text": QUESTION}],
            },
        ],
    )
    want = llm_f32.chat(
        [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": "Hello.\n" + QUESTION}], _greedy(12)
    )
    assert r.output_text == want.text


def test_stream_events_in_the_api_order(client):
    kw = dict(model=MODEL_NAME, input=QUESTION, temperature=0, max_output_tokens=16)
    whole = client.responses.create(**kw)
    events = list(client.responses.create(**kw, stream=True))
    kinds = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    final = "response.completed" if whole.status == "completed" else "response.incomplete"
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        final,
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(deltas) == whole.output_text == events[-4].text
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert events[-1].response.output_text == whole.output_text and events[-1].response.id == events[0].response.id
    item_ids = {e.item.id for e in events if e.type.startswith("response.output_item")}
    assert len(item_ids) == 1 and {e.item_id for e in events if e.type == "response.output_text.delta"} == item_ids


def test_max_output_tokens_makes_it_incomplete(client):
    r = client.responses.create(
        model=MODEL_NAME, input="Tell me a long story about a dragon.", temperature=0, max_output_tokens=3
    )
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3
    events = list(
        client.responses.create(
            model=MODEL_NAME,
            input="Tell me a long story about a dragon.",
            temperature=0,
            max_output_tokens=3,
            stream=True,
        )
    )
    assert events[-1].type == "response.incomplete" and events[-1].response.output_text == r.output_text


def test_previous_response_id_continues_the_conversation(client, llm_f32):
    first = [{"role": "user", "content": "My name is Ana. Say hello to me."}]
    answer = llm_f32.chat(first, _greedy(12)).text
    r1 = client.responses.create(
        model=MODEL_NAME, input=first, instructions=INSTRUCTIONS, temperature=0, max_output_tokens=12
    )
    assert r1.output_text == llm_f32.chat([{"role": "system", "content": INSTRUCTIONS}, *first], _greedy(12)).text
    r1 = client.responses.create(model=MODEL_NAME, input=first, temperature=0, max_output_tokens=12)
    assert r1.output_text == answer
    r2 = client.responses.create(
        model=MODEL_NAME, input="What is my name?", previous_response_id=r1.id, temperature=0, max_output_tokens=12
    )
    want = llm_f32.chat(
        [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "What is my name?"}], _greedy(12)
    )
    assert r2.output_text == want.text and r2.previous_response_id == r1.id
    assert client.responses.retrieve(r1.id).output_text == answer
    # Streamed, the chain continues the same way.
    events = list(
        client.responses.create(
            model=MODEL_NAME,
            input="What is my name?",
            previous_response_id=r1.id,
            temperature=0,
            max_output_tokens=12,
            stream=True,
        )
    )
    assert events[-1].response.output_text == want.text


def test_unknown_or_unstored_previous_response_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL_NAME, input="hi", previous_response_id="resp_nope")
    assert e.value.body["code"] == "previous_response_not_found" and e.value.body["param"] == "previous_response_id"
    unstored = client.responses.create(model=MODEL_NAME, input="hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL_NAME, input="hi", previous_response_id=unstored.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    kept = client.responses.create(model=MODEL_NAME, input="hi", max_output_tokens=2)
    client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)


def test_history_is_bounded():
    from llamita.serving.response_history import ResponseHistory, StoredResponse

    history = ResponseHistory(max_responses=2)
    for name in ("a", "b"):
        history.put(name, StoredResponse({}, []))
    assert history.get("a") is not None  # a is now the most recently used
    history.put("c", StoredResponse({}, []))
    assert len(history) == 2 and history.get("b") is None and history.get("a") is not None


def test_base_url_without_v1(server, client):
    bare = openai.OpenAI(base_url=server.url, api_key="unused", timeout=TIMEOUT, max_retries=0)
    kw = dict(model="any-name", input=QUESTION, temperature=0, max_output_tokens=8)
    r = bare.responses.create(**kw)
    assert r.output_text == client.responses.create(**kw).output_text and r.model == MODEL_NAME


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]},
            "input[0].content[0]",
        ),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"instructions": "x"}, "input"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(server, body, param):
    r = httpx.post(server.url + "/v1/responses", json=body, timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and param in error["message"]


# ------------------------------------------------------------------ tools (a scripted model)

CALL_TEXT = '<tool_call>{"name": "get_weather", "arguments": {"city": "Madrid"}}</tool_call>'
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
ASK = "What is the weather in Madrid?"


@pytest.fixture(scope="module")
def scripted(loaded):
    running, stop = start_server(loaded, engine=ScriptedEngine(loaded, "Let me check. " + CALL_TEXT))
    yield openai.OpenAI(base_url=running.url + "/v1", api_key="x", timeout=30, max_retries=0)
    stop()


def test_function_calls_whole_and_streamed(scripted):
    r = scripted.responses.create(model=MODEL_NAME, input=ASK, tools=[TOOL])
    message, call = r.output
    assert message.type == "message" and message.content[0].text == "Let me check."
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Madrid"} and call.id.startswith("fc_")

    events = list(scripted.responses.create(model=MODEL_NAME, input=ASK, tools=[TOOL], stream=True))
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(pieces) > 3 and json.loads("".join(pieces)) == {"city": "Madrid"}
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == {"city": "Madrid"}
    assert kinds[-1] == "response.completed" and [o.type for o in events[-1].response.output] == [
        "message",
        "function_call",
    ]


def test_function_call_output_reaches_the_prompt_as_chat_would(scripted):
    """The call and its output sent back as items make the same prompt as the chat messages
    with tool_calls and a tool result (same prompt token count on the chat route)."""
    r = scripted.responses.create(
        model=MODEL_NAME,
        tools=[TOOL],
        input=[
            {"role": "user", "content": ASK},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Madrid"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "22 C, sunny"},
        ],
    )
    chat = scripted.chat.completions.create(
        model=MODEL_NAME,
        tools=[{"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}],
        messages=[
            {"role": "user", "content": ASK},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Madrid"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "22 C, sunny"},
        ],
    )
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    # tool_choice "none" hides the tools: the text is not parsed as a call.
    plain = scripted.responses.create(model=MODEL_NAME, input=ASK, tools=[TOOL], tool_choice="none")
    assert [o.type for o in plain.output] == ["message"] and "<tool_call>" in plain.output_text


def test_body_errors_are_openai_shaped_without_a_json_content_type(server):
    for raw, param in (
        (b"[" * 100_000 + b"]" * 100_000, None),
        (b'{"input": "\xff"}', None),
        (b"[1]", None),
        (b'{"input": "x", "temperature": "hot"}', "temperature"),
    ):
        r = httpx.post(server.url + "/responses", content=raw, timeout=TIMEOUT)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    # curl -d sends a form content type; the body is JSON all the same, as on the other routes.
    r = httpx.post(
        server.url + "/v1/responses",
        content=b'{"input": "hi", "max_output_tokens": 2}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 2


def test_function_call_output_after_previous_response_id(scripted):
    """The agent loop: the model calls a function; the client sends only the function's output
    with previous_response_id. The prompt is the chat route's for the same conversation."""
    r1 = scripted.responses.create(model=MODEL_NAME, input=ASK, tools=[TOOL])
    call = r1.output[-1]
    r2 = scripted.responses.create(
        model=MODEL_NAME,
        tools=[TOOL],
        previous_response_id=r1.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "22 C, sunny"}],
    )
    chat = scripted.chat.completions.create(
        model=MODEL_NAME,
        tools=[{"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}],
        messages=[
            {"role": "user", "content": ASK},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": call.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.call_id, "name": "get_weather", "content": "22 C, sunny"},
        ],
    )
    assert r2.usage.input_tokens == chat.usage.prompt_tokens


def test_json_schema_format_needs_its_schema(server):
    r = httpx.post(
        server.url + "/v1/responses",
        timeout=TIMEOUT,
        json={"input": "x", "text": {"format": {"type": "json_schema", "name": "p"}}},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "text.format", r.text


def test_input_items_become_chat_messages():
    from llamita.serving.responses_request import ResponsesRequest, input_messages

    earlier = [
        {"role": "user", "content": ASK},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
    ]
    body = ResponsesRequest.model_validate(
        {
            "input": [
                {"type": "function_call_output", "call_id": "call_a", "output": "22 C"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "It is warm."}]},
                {"type": "function_call", "call_id": "call_b", "name": "get_time", "arguments": "{}"},
                {
                    "type": "function_call_output",
                    "call_id": "call_b",
                    "output": [{"type": "input_text", "text": "noon"}],
                },
            ]
        }
    )
    assert input_messages(body.input, earlier) == [
        {"role": "tool", "tool_call_id": "call_a", "name": "get_weather", "content": "22 C"},
        {
            "role": "assistant",
            "content": "It is warm.",
            "tool_calls": [{"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_b", "name": "get_time", "content": "noon"},
    ]


def test_sdk_stream_helper_accumulates_the_same_response(client, scripted):
    """The SDK's responses.stream() rebuilds the response from the events; it must find every
    item and part where the events say, for text and for function calls."""
    kw = dict(model=MODEL_NAME, input=QUESTION, temperature=0, max_output_tokens=12)
    with client.responses.stream(**kw) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == text == client.responses.create(**kw).output_text
    with scripted.responses.stream(model=MODEL_NAME, input=ASK, tools=[TOOL]) as stream:
        final = stream.get_final_response()
    call = final.output[-1]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Madrid"}
