"""Build a Tokenizer from a model folder: Hugging Face files or Meta's `tokenizer.model`.

* Hugging Face: `tokenizer.json` (a byte-level BPE; its own pre-tokenizer and normalizer are
  used as written), `tokenizer_config.json` (chat template, BOS/EOS, add_bos_token),
  optionally `chat_template.jinja` and `generation_config.json` (eos_token_id -> stop ids).
* Meta original: `tokenizer.model` is tiktoken's rank file, "<base64 bytes> <rank>" per line
  (docs/llama-reference.md §3.1). Ranks become a `tokenizers` BPE (merges derived from the ranks, see
  bpe.merges_from_ranks) with the Llama 3 regex, plus the 256 special tokens named as in HF's
  Llama 3.1 files (§3.2). There is no template: chats use the built-in Llama 3.1 format.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as RustTokenizer

from llamita.errors import ModelFileError, TokenizerError
from llamita.tokenizer.bpe import bytes_to_byte_level, merges_from_ranks
from llamita.tokenizer.tokenizer import (
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_USER_DEFINED,
    Tokenizer,
)

LLAMA3_RANKS = 128_000
# Ids 128000.. as Hugging Face's Llama 3.1 tokenizer names them; then reserved_3 .. reserved_247.
LLAMA3_NAMED_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)
LLAMA3_N_SPECIALS = 256


def llama3_special_tokens() -> list[str]:
    """The 256 special tokens of Llama 3.1, in id order from 128000."""
    reserved = LLAMA3_N_SPECIALS - len(LLAMA3_NAMED_SPECIALS)
    return list(LLAMA3_NAMED_SPECIALS) + [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + reserved)]


def tokenizer_from_folder(folder: Path) -> Tokenizer:
    """The tokenizer of a Hugging Face or Meta model folder.

    Raises ModelFileError if `folder` is not a readable folder, TokenizerError if it holds no
    tokenizer we can build (SentencePiece models, non-byte-level tokenizer.json, other tiktoken
    vocabularies than Llama 3's).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"{folder} is not a folder")
    if (folder / "tokenizer.json").is_file():
        return _from_hugging_face(folder)
    if (folder / "tokenizer.model").is_file():
        return _from_meta(folder)
    raise TokenizerError(
        f"{folder} has no tokenizer: expected tokenizer.json (Hugging Face) or tokenizer.model (Meta's Llama 3)"
    )


# ---------------------------------------------------------------- Hugging Face


def _from_hugging_face(folder: Path) -> Tokenizer:
    path = folder / "tokenizer.json"
    data = read_json_file(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not _has_byte_level(data.get("pre_tokenizer")):
        kind = model.get("type", "unknown")
        raise TokenizerError(
            f"{path}: only byte-level BPE tokenizers (Llama 3, SmolLM, Qwen...) are supported; "
            f"this one is a {kind} model without a ByteLevel pre-tokenizer (SentencePiece style)"
        )
    vocab: dict[str, int] = model.get("vocab") or {}
    added = data.get("added_tokens") or []
    size = max([*vocab.values(), *(t["id"] for t in added)], default=-1) + 1
    tokens = [""] * size
    types = [TOKEN_NORMAL] * size
    for text, token_id in vocab.items():
        tokens[token_id] = text
    for token in added:
        tokens[token["id"]] = token["content"]
        # As llama.cpp's converter: special added tokens are control tokens, others user-defined.
        types[token["id"]] = TOKEN_CONTROL if token.get("special") else TOKEN_USER_DEFINED

    # The plain-text encoder: the file as written, less added tokens (the Tokenizer matches
    # specials itself, and only where allowed) and less the BOS post-processor.
    plain = {**data, "added_tokens": [], "post_processor": None, "truncation": None, "padding": None}
    try:
        encoder = RustTokenizer.from_str(json.dumps(plain))
    except Exception as exc:  # tokenizers raises plain Exception for a bad file
        raise TokenizerError(f"{path}: cannot build the tokenizer: {exc}") from exc

    config_path = folder / "tokenizer_config.json"
    config = read_json_file(config_path) if config_path.is_file() else {}
    ids = {text: i for i, text in enumerate(tokens) if text}

    def id_of(key: str) -> int | None:
        text = token_text(config.get(key))
        return ids.get(text) if text else None

    bos_id = id_of("bos_token")
    add_bos = config.get("add_bos_token")
    if not isinstance(add_bos, bool):
        add_bos = _post_processor_adds(data.get("post_processor"), tokens[bos_id] if bos_id is not None else None)
    return Tokenizer(
        tokens,
        types,
        [],
        bos_id=bos_id,
        eos_id=id_of("eos_token"),
        eot_id=ids.get("<|eot_id|>"),
        eom_id=ids.get("<|eom_id|>"),
        add_bos=add_bos and bos_id is not None,
        chat_template=chat_template(folder, config),
        encoder=encoder,
        stop_ids=_eos_ids(folder),
    )


def _has_byte_level(pre_tokenizer: Any) -> bool:
    if not isinstance(pre_tokenizer, dict):
        return False
    if pre_tokenizer.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(p) for p in pre_tokenizer.get("pretokenizers") or [])


def _post_processor_adds(processor: Any, bos_text: str | None) -> bool:
    """Whether tokenizer.json's post-processor starts a single sequence with BOS."""
    if not isinstance(processor, dict) or bos_text is None:
        return False
    if processor.get("type") == "Sequence":
        return any(_post_processor_adds(p, bos_text) for p in processor.get("processors") or [])
    if processor.get("type") == "TemplateProcessing":
        single = processor.get("single") or []
        first = single[0].get("SpecialToken") if single and isinstance(single[0], dict) else None
        return isinstance(first, dict) and first.get("id") == bos_text
    return False


def token_text(value: Any) -> str | None:
    """tokenizer_config.json writes a token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    """chat_template.jinja (newer transformers) or tokenizer_config's chat_template.

    A list of named templates keeps "default" (others, such as "tool_use", are not used yet).
    """
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return _read_text(jinja)
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) and template else None


def _eos_ids(folder: Path) -> list[int]:
    """generation_config.json's eos_token_id (int or list), else config.json's."""
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            eos = read_json_file(path).get("eos_token_id")
            if eos is not None:
                return [int(i) for i in (eos if isinstance(eos, list) else [eos])]
    return []


# ---------------------------------------------------------------- Meta


def _from_meta(folder: Path) -> Tokenizer:
    path = folder / "tokenizer.model"
    ranks = read_tiktoken_ranks(path)
    if len(ranks) != LLAMA3_RANKS:
        raise TokenizerError(
            f"{path} has {len(ranks)} ranks; only Llama 3's {LLAMA3_RANKS}-rank tiktoken "
            "vocabulary is supported (its pre-tokenizer and special tokens are known)"
        )
    tokens = [bytes_to_byte_level(data) for data in ranks]
    merges = merges_from_ranks({token: rank for rank, token in enumerate(tokens)})
    specials = llama3_special_tokens()
    ids = {text: LLAMA3_RANKS + i for i, text in enumerate(specials)}
    return Tokenizer(
        tokens + specials,
        [TOKEN_NORMAL] * len(tokens) + [TOKEN_CONTROL] * len(specials),
        merges,
        pre="llama-bpe",  # the Llama 3 regex, a piece that is a token taken whole (tiktoken)
        bos_id=ids["<|begin_of_text|>"],
        eos_id=ids["<|end_of_text|>"],
        eot_id=ids["<|eot_id|>"],
        eom_id=ids["<|eom_id|>"],
        add_bos=True,
    )


def read_tiktoken_ranks(path: Path) -> list[bytes]:
    """Token bytes in rank order from a tiktoken file; TokenizerError if it is not one."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from exc
    by_rank: dict[int, bytes] = {}
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError("expected two fields")
            by_rank[int(fields[1])] = base64.b64decode(fields[0], validate=True)
        except (ValueError, binascii.Error):
            raise TokenizerError(
                f"{path} is not a tiktoken rank file (line {number} is not '<base64> <rank>'); "
                "SentencePiece tokenizer.model files (Llama 1/2, Mistral) are not supported"
            ) from None
    if sorted(by_rank) != list(range(len(by_rank))):
        raise TokenizerError(f"{path}: ranks are not 0..{len(by_rank) - 1} without gaps")
    return [by_rank[r] for r in range(len(by_rank))]


# ---------------------------------------------------------------- files


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from exc


def read_json_file(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(_read_text(path))
    except ValueError as exc:
        raise TokenizerError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise TokenizerError(f"{path} does not hold a JSON object")
    return value
