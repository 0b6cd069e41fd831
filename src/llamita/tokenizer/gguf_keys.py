"""The `tokenizer.*` GGUF keys a folder's tokenizer files stand for, as llama.cpp's
convert_hf_to_gguf.py writes them: what `llamita quantize` puts in the GGUF it makes from a
Hugging Face or Meta folder.

The files are read by the same functions that build the Tokenizer a folder runs with
(tokenizer/files.py), so a folder and the GGUF made from it carry the same vocabulary, special
tokens and chat template: one reader, one precedence (`chat_template.jinja` over
tokenizer_config.json's `chat_template`, as transformers loads them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamita.errors import ModelFileError, UnsupportedModelError
from llamita.tokenizer.bpe import bytes_to_byte_level, merges_from_ranks
from llamita.tokenizer.files import (
    chat_template,
    llama3_special_tokens,
    read_json_file,
    read_tiktoken_ranks,
    token_text,
)
from llamita.tokenizer.pretokenizer import LLAMA3
from llamita.tokenizer.tokenizer import TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED


def gguf_keys_from_hf(folder: Path, vocab_size: int) -> dict[str, Any]:
    """The keys for a folder's tokenizer.json (+ tokenizer_config.json, chat_template.jinja,
    config.json): byte-level tokens padded to the embedding's `vocab_size` rows with
    `[PAD<id>]`, added special tokens as control tokens, merges as "left right"."""
    path = folder / "tokenizer.json"
    if not path.exists():
        raise ModelFileError(f"{path}: file not found (needed to write the GGUF vocabulary)")
    tok = read_json_file(path)
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UnsupportedModelError(f"{path}: tokenizer model {model.get('type')!r} is not byte-level BPE")
    by_id: dict[int, tuple[str, int]] = {i: (t, TOKEN_NORMAL) for t, i in model["vocab"].items()}
    for added in tok.get("added_tokens") or []:
        kind = TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    n = max(vocab_size, max(by_id) + 1)
    tokens = [by_id.get(i, (f"[PAD{i}]", TOKEN_UNUSED)) for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = read_json_file(tok_cfg_path) if tok_cfg_path.exists() else {}
    ids = {text: i for i, (text, _) in enumerate(tokens)}

    def token_id(key: str) -> int | None:
        text = token_text(tok_cfg.get(key))
        return ids.get(text) if text else None

    out: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": _pre_tokenizer_name(tok.get("pre_tokenizer"), path),
        "tokenizer.ggml.tokens": [t for t, _ in tokens],
        "tokenizer.ggml.token_type": [k for _, k in tokens],
        "tokenizer.ggml.merges": merges,
    }
    config_path = folder / "config.json"
    model_cfg = read_json_file(config_path) if config_path.exists() else {}
    for key, gguf_key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "padding_token_id"),
        ("unk_token", "unknown_token_id"),
    ):
        i = token_id(key)
        if i is None and key in ("bos_token", "eos_token"):  # else config.json's (first) id
            value = model_cfg.get(f"{key}_id")
            first = value[0] if isinstance(value, list) and value else value
            i = first if isinstance(first, int) else None
        if i is not None:
            out[f"tokenizer.ggml.{gguf_key}"] = i
    bos = out.get("tokenizer.ggml.bos_token_id")
    if "add_bos_token" in tok_cfg:
        out["tokenizer.ggml.add_bos_token"] = bool(tok_cfg["add_bos_token"])
    elif bos is not None:  # Llama 3 says it through the post-processor's template instead
        out["tokenizer.ggml.add_bos_token"] = _template_adds(tok.get("post_processor"), tokens[bos][0])
    if (template := chat_template(folder, tok_cfg)) is not None:
        out["tokenizer.chat_template"] = template
    return out


def gguf_keys_from_tiktoken(path: Path, vocab_size: int) -> dict[str, Any]:
    """The keys for a Llama 3 tokenizer.model, equal to what its tokenizer.json holds: every
    rank as a byte-level token, merges derived from the ranks as transformers'
    TikTokenConverter does, then the 256 Llama 3.1 special tokens."""
    ranked = [bytes_to_byte_level(t) for t in read_tiktoken_ranks(path)]
    specials = llama3_special_tokens()
    if len(ranked) + len(specials) > vocab_size:
        raise ModelFileError(
            f"{path}: {len(ranked) + len(specials)} tokens with the Llama 3 "
            f"specials, but the embedding has only {vocab_size} rows"
        )
    n_pad = vocab_size - len(ranked) - len(specials)
    special = {t: len(ranked) + i for i, t in enumerate(specials)}
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": ranked + specials + [f"[PAD{i}]" for i in range(vocab_size - n_pad, vocab_size)],
        "tokenizer.ggml.token_type": (
            [TOKEN_NORMAL] * len(ranked) + [TOKEN_CONTROL] * len(specials) + [TOKEN_UNUSED] * n_pad
        ),
        "tokenizer.ggml.merges": merges_from_ranks({t: r for r, t in enumerate(ranked)}),
        "tokenizer.ggml.bos_token_id": special["<|begin_of_text|>"],
        "tokenizer.ggml.eos_token_id": special["<|end_of_text|>"],
        "tokenizer.ggml.eot_token_id": special["<|eot_id|>"],
        "tokenizer.ggml.eom_token_id": special["<|eom_id|>"],
        "tokenizer.ggml.padding_token_id": special["<|finetune_right_pad_id|>"],
        "tokenizer.ggml.add_bos_token": True,
    }


def _pre_tokenizer_name(pre: dict[str, Any] | None, path: Path) -> str:
    """llama.cpp's `tokenizer.ggml.pre` name for a tokenizer.json pre-tokenizer we recognise."""
    given = (pre.get("pretokenizers") if pre and pre.get("type") == "Sequence" else [pre]) or []
    steps: list[dict[str, Any]] = [s for s in given if s]
    kinds = [s.get("type") for s in steps]
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == LLAMA3:
        return "llama-bpe"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    raise UnsupportedModelError(
        f"{path}: pre-tokenizer {kinds} is not one llamita recognises (Llama 3, GPT-2 or SmolLM byte-level BPE)"
    )


def _template_adds(post: dict[str, Any] | None, special: str) -> bool:
    """Whether tokenizer.json's post-processor puts `special` first in a single sequence."""
    for step in (post or {}).get("processors", [post or {}]):
        if step.get("type") == "TemplateProcessing":
            first = (step.get("single") or [{}])[0]
            return bool(first.get("SpecialToken", {}).get("id") == special)
    return False
