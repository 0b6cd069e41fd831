"""Streaming detokenization: whole characters only, and the same text as a one-shot decode."""

from __future__ import annotations

import pytest

from llamita.tokenizer import IncrementalDetokenizer, Tokenizer

TEXT = (
    "Él dijo: «¡Hola, señor Müller!» 👋🏽 and 👨‍👩‍👧‍👦 ate 🍕🍕 in 東京 — 人工智能正在改变世界。"
    " 안녕하세요 🇪🇸🇯🇵 ∑√∞ e\u0301 ☕️ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 done."
)


def stream(tok: Tokenizer, ids: list[int], **kw: bool) -> list[str]:
    det = IncrementalDetokenizer(tok, **kw)
    return [det.add(i) for i in ids] + [det.flush()]


@pytest.fixture(params=["smollm", "llama3"])
def tok(request: pytest.FixtureRequest) -> Tokenizer:
    return request.getfixturevalue(f"{request.param}_tok")


def test_chunks_join_to_decode_and_are_whole_characters(tok: Tokenizer) -> None:
    ids = tok.encode(TEXT)
    # The test means something only if some tokens end inside a character.
    partial = [i for i in ids if tok.token_piece(i) != tok.token_bytes(i).decode("utf-8", "ignore")]
    assert partial, "no token splits a character; choose a harder text"

    chunks = stream(tok, ids)
    assert "".join(chunks) == tok.decode(ids) == TEXT
    for chunk in chunks:
        assert "\ufffd" not in chunk
        assert chunk.encode("utf-8").decode("utf-8") == chunk
    assert "" in chunks  # bytes were held back at least once


def test_special_tokens_skipped_or_kept(smollm_tok: Tokenizer) -> None:
    ids = smollm_tok.encode("<|im_start|>assistant\n🍕 ok<|im_end|>", allow_special=True)
    assert "".join(stream(smollm_tok, ids)) == "assistant\n🍕 ok"
    assert "".join(stream(smollm_tok, ids, skip_special=False)) == smollm_tok.decode(ids)
    assert smollm_tok.decode(ids).startswith("<|im_start|>")


def test_special_between_split_character_matches_decode(smollm_tok: Tokenizer) -> None:
    pizza = smollm_tok.encode("🍕")
    assert len(pizza) > 1
    ids = pizza[:1] + [2] + pizza[1:]  # <|im_end|> lands inside the emoji's bytes
    for skip in (True, False):
        assert "".join(stream(smollm_tok, ids, skip_special=skip)) == smollm_tok.decode(ids, skip_special=skip)


def test_flush_replaces_an_unfinished_character(smollm_tok: Tokenizer) -> None:
    pizza = smollm_tok.encode("a🍕")
    det = IncrementalDetokenizer(smollm_tok)
    out = [det.add(i) for i in pizza[:-1]]
    assert "".join(out) == "a"
    assert det.flush() == "\ufffd"
    # After a flush the stream starts clean.
    assert "".join(det.add(i) for i in smollm_tok.encode("ñ")) + det.flush() == "ñ"


def test_invalid_bytes_match_decode(smollm_tok: Tokenizer) -> None:
    # Every byte-level vocabulary has a token for each single byte.
    byte_token = {
        smollm_tok.token_bytes(i): i
        for i in range(smollm_tok.vocab_size)
        if len(smollm_tok.token_bytes(i)) == 1 and not smollm_tok.is_special(i)
    }
    # Continuation bytes without a lead, a lead cut short by ASCII, then a valid 4-byte emoji.
    raw = b"\x80\xbf\xe2a\xf0\x9f\x8d\x95"
    ids = [byte_token[bytes([b])] for b in raw]
    chunks = stream(smollm_tok, ids)
    assert "".join(chunks) == smollm_tok.decode(ids) == "\ufffd\ufffd\ufffda\U0001f355"
