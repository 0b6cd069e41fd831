"""Stop strings over streamed deltas, and dropping old turns to fit the context window."""

from __future__ import annotations

import pytest

from llamita.engine.conversation import fit_messages, validate_messages
from llamita.engine.stop import StopStringMatcher
from llamita.errors import ContextOverflowError, InvalidParameterError


def stream(stops, deltas):
    m = StopStringMatcher(stops)
    shown = [m.feed(d) for d in deltas]
    return shown, m.stopped, m.flush()


def test_no_stops_passes_through():
    assert stream([], ["a", "b"]) == (["a", "b"], False, "")


def test_stop_inside_one_delta():
    shown, stopped, rest = stream(["END"], ["hello END world"])
    assert "".join(shown) == "hello " and stopped and rest == ""


def test_stop_split_across_deltas_is_never_shown():
    shown, stopped, _ = stream(["</answer>"], ["The answer is 4", "</ans", "wer> more"])
    assert shown == ["The answer is 4", "", ""]
    assert stopped


def test_false_start_is_released():
    shown, stopped, rest = stream(["STOP"], ["a ST", "ART b", " S"])
    assert "".join(shown) + rest == "a START b S"
    assert not stopped
    assert shown[0] == "a " and rest == "S"  # held back only while it could still be a stop


def test_earliest_of_several_stops_wins():
    shown, stopped, _ = stream(["world", "lo w"], ["hello world"])
    assert "".join(shown) == "hel" and stopped


def test_nothing_after_stop():
    m = StopStringMatcher(["x"])
    assert m.feed("ax") == "a"
    assert m.feed("more") == "" and m.flush() == ""


def count_words(messages):
    return sum(len(m["content"].split()) + 1 for m in messages)


def test_fit_messages_keeps_system_and_drops_oldest_turns():
    msgs = [{"role": "system", "content": "be brief"}]
    for i in range(5):
        msgs += [
            {"role": "user", "content": f"question {i} " * 3},
            {"role": "assistant", "content": f"answer {i} " * 3},
        ]
    msgs.append({"role": "user", "content": "last question"})
    kept, dropped = fit_messages(msgs, count_words, budget=30)
    assert kept[0]["role"] == "system" and kept[-1]["content"] == "last question"
    assert kept[1]["role"] == "user"  # never starts with an orphan answer
    assert count_words(kept) <= 30
    assert dropped == len(msgs) - len(kept) and dropped % 2 == 0
    # The kept turns are the most recent ones, in order.
    assert kept[1:] == msgs[len(msgs) - len(kept) + 1 :]


def test_fit_messages_untouched_when_it_fits():
    msgs = [{"role": "user", "content": "hi"}]
    assert fit_messages(msgs, count_words, 100) == (msgs, 0)


def test_last_message_alone_too_long():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "word " * 50}]
    with pytest.raises(ContextOverflowError, match="last message"):
        fit_messages(msgs, count_words, 10)


@pytest.mark.parametrize(
    "bad",
    [[], "hello", [{"role": "user"}], [{"role": "robot", "content": "x"}], [{"role": "user", "content": 3}], ["hi"]],
)
def test_validate_messages_rejects(bad):
    with pytest.raises(InvalidParameterError, match="messages"):
        validate_messages(bad)


def test_validate_messages_content_parts_and_developer():
    msgs = validate_messages(
        [
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"role": "tool", "content": [{"type": "text", "text": "42"}], "tool_call_id": "c"},
            {"role": "tool", "content": [1, 2], "tool_call_id": "d"},  # a JSON result stays JSON
        ]
    )
    # Parts are joined with a newline, as vLLM and llama.cpp's server join them.
    assert [(m["role"], m["content"]) for m in msgs] == [
        ("system", "Be brief."),
        ("user", "a\nb"),
        ("tool", "42"),
        ("tool", [1, 2]),
    ]


def test_validate_messages_names_a_non_text_part():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(InvalidParameterError) as e:
        validate_messages([{"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]}])
    assert e.value.name == "messages[0].content[1]" and "image_url" in str(e.value)
    with pytest.raises(InvalidParameterError) as e:
        validate_messages([{"role": "user", "content": [{"type": "text", "text": 5}]}])
    assert e.value.name == "messages[0].content[0].text"


def test_continue_final_message_in_a_chat_template(llm_f32):
    """Assistant prefill through a Jinja template (ChatML): the new-turn prompt, then the text."""
    from llamita.engine.prompts import encode_chat

    tok = llm_f32.tokenizer
    ask = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hola"}]
    ids = encode_chat(tok, ask + [{"role": "assistant", "content": "¡Hola! Soy "}], continue_final_message=True)
    assert tok.decode(ids) == tok.decode(encode_chat(tok, ask)) + "¡Hola! Soy"
    assert encode_chat(tok, ask + [{"role": "assistant", "content": ""}], continue_final_message=True) == encode_chat(
        tok, ask
    )
    with pytest.raises(InvalidParameterError, match="continue_final_message"):
        encode_chat(tok, ask, continue_final_message=True)
