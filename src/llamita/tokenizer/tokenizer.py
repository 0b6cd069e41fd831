"""The vocabulary of a GGUF model: text <-> token ids, special tokens, chat prompts.

Only byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`: Llama 3, SmolLM, Qwen...)
are supported. Plain text is always BPE-encoded as text; special tokens (token types 3 control
and 4 user-defined) are matched only where the caller allows it, leftmost-longest, the rule
`tokenizers`' added-token matcher and llama.cpp use.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from typing import Any

from tokenizers import Tokenizer as RustTokenizer

from llamita.errors import InvalidParameterError, TokenizerError
from llamita.tokenizer.bpe import build_bpe, byte_level_to_bytes
from llamita.tokenizer.chat_template import CHATML_TEMPLATE, ChatTemplate
from llamita.tokenizer.llama3_format import SPECIAL_TOKENS as LLAMA3_SPECIALS
from llamita.tokenizer.llama3_format import Part, llama3_chat_parts
from llamita.tokenizer.pretokenizer import pre_tokenizer_spec
from llamita.tokenizer.special_token_guard import SpecialShield
from llamita.tokenizer.tool_calls import with_dict_arguments
from llamita.tokenizer.tool_prompt import tools_as_text

# GGUF tokenizer.ggml.token_type values.
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

_SPECIAL_TYPES = (TOKEN_CONTROL, TOKEN_USER_DEFINED)

# Tokens that end a turn in the common chat formats (Llama 3, ChatML, GPT-2 style documents);
# llama.cpp stops on them too even when the file names another EOS.
_STOP_TEXTS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>")


class Tokenizer:
    """Encodes text to token ids and back for one byte-level BPE vocabulary.

    tokens: the vocabulary, index = id, normal tokens in GPT-2 byte-level spelling.
    token_types: GGUF token types, one per token (1 normal, 3 control, 4 user-defined...).
    merges: "left right" BPE merges, highest priority first.
    pre: the `tokenizer.ggml.pre` name that selects the pre-tokenizer (see pretokenizer.py).
    add_bos: whether prompts start with BOS; None = llama.cpp's default for `pre`.
    chat_template: Jinja source of the chat template, if the model has one. Without one a
        Llama 3 vocabulary uses the built-in Llama 3.1 format, any other ChatML.
    encoder: a ready plain-text encoder (a `tokenizers.Tokenizer` without added tokens, e.g. from
        a tokenizer.json) used instead of building one from `merges` and `pre`.
    stop_ids: more ids that end generation (e.g. generation_config.json's eos_token_id list).
    """

    def __init__(
        self,
        tokens: Sequence[str],
        token_types: Sequence[int] | None,
        merges: Sequence[str],
        *,
        pre: str | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        eot_id: int | None = None,
        eom_id: int | None = None,
        add_bos: bool | None = None,
        chat_template: str | None = None,
        encoder: RustTokenizer | None = None,
        stop_ids: Iterable[int] = (),
    ) -> None:
        self._tokens = [str(t) for t in tokens]
        n = len(self._tokens)
        if n == 0:
            raise TokenizerError("the model file's vocabulary (tokenizer.ggml.tokens) is empty")
        if token_types is None:
            token_types = [TOKEN_NORMAL] * n
        self._types = [int(t) for t in token_types]
        if len(self._types) != n:
            raise TokenizerError(f"tokenizer.ggml.token_type has {len(self._types)} entries for {n} tokens")

        # Some published vocabularies repeat a piece (padding entries); like llama.cpp, text maps
        # to the first id that spells it and every id still decodes.
        self._ids: dict[str, int] = {}
        for token_id, text in enumerate(self._tokens):
            if text:
                self._ids.setdefault(text, token_id)

        self.bos_id = _checked_id("bos", bos_id, n)
        self.eos_id = _checked_id("eos", eos_id, n)
        self.eot_id = _checked_id("eot", eot_id, n)
        self.eom_id = _checked_id("eom", eom_id, n)

        spec = pre_tokenizer_spec(pre)
        if add_bos is None:
            add_bos = spec.add_bos and self.bos_id is not None
        elif add_bos and self.bos_id is None:
            raise TokenizerError("tokenizer.ggml.add_bos_token is true but the file names no BOS token")
        self.add_bos = bool(add_bos)
        self.pre = pre

        # Raw bytes of every token: what decoding concatenates.
        self._bytes = [
            text.encode("utf-8") if kind in _SPECIAL_TYPES else byte_level_to_bytes(text)
            for text, kind in zip(self._tokens, self._types)
        ]
        self._special_ids = frozenset(i for i, kind in enumerate(self._types) if kind in _SPECIAL_TYPES)
        specials = sorted({self._tokens[i] for i in self._special_ids if self._tokens[i]}, key=len, reverse=True)
        # Longest first, so at each position the longest special wins (leftmost-longest).
        self._special_re = re.compile("|".join(map(re.escape, specials))) if specials else None
        self._bpe = encoder or build_bpe(self._tokens, [str(m) for m in merges], spec)
        self._chat_template_source = chat_template
        self._extra_stop_ids = frozenset(i for i in (_checked_id("stop", t, n) for t in stop_ids) if i is not None)

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any]) -> Tokenizer:
        """Build from GGUF metadata (key -> plain Python value, arrays as lists).

        Raises TokenizerError for a missing or unsupported vocabulary.
        """
        model = meta.get("tokenizer.ggml.model")
        if model is None:
            raise TokenizerError("the model file has no tokenizer (tokenizer.ggml.model is missing)")
        if model == "llama":
            raise TokenizerError("SentencePiece ('llama') vocabularies are not supported yet")
        if model != "gpt2":
            raise TokenizerError(f"tokenizer model {model!r} is not supported; only byte-level BPE ('gpt2') is")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in meta:
                raise TokenizerError(f"the model file has no {key}")
        # A file from a stranger can hold any value type under any key: check each before use.
        tokens = _typed(meta, "tokenizer.ggml.tokens", list, str)
        token_types = _typed(meta, "tokenizer.ggml.token_type", list, int)
        merges = _typed(meta, "tokenizer.ggml.merges", list, str)
        ids = {name: _typed(meta, f"tokenizer.ggml.{name}_token_id", int) for name in ("bos", "eos", "eot", "eom")}
        add_bos = _typed(meta, "tokenizer.ggml.add_bos_token", bool)
        return cls(
            tokens,
            token_types,
            merges,
            pre=_typed(meta, "tokenizer.ggml.pre", str),
            bos_id=ids["bos"],
            eos_id=ids["eos"],
            eot_id=ids["eot"],
            eom_id=ids["eom"],
            add_bos=add_bos,
            chat_template=_typed(meta, "tokenizer.chat_template", str),
        )

    # ----------------------------------------------------------------- vocabulary

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @cached_property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end generation: EOS, EOT, EOM, the usual end-of-turn tokens in the vocabulary,
        and any the model's files list."""
        ids = {i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None}
        ids.update(self._extra_stop_ids)
        ids.update(self._ids[text] for text in _STOP_TEXTS if text in self._ids)
        return frozenset(ids)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (a special token: its text in UTF-8)."""
        return self._bytes[self._check(token_id)]

    def token_piece(self, token_id: int) -> str:
        """The token as readable text (invalid UTF-8, e.g. half a character, as U+FFFD)."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def is_special(self, token_id: int) -> bool:
        """True for control and user-defined tokens (GGUF token types 3 and 4)."""
        return self._check(token_id) in self._special_ids

    def token_to_id(self, text: str) -> int | None:
        """The id of a token given as stored in the vocabulary ("<|im_end|>", "Ġthe"), or None."""
        return self._ids.get(text)

    # ----------------------------------------------------------------- encode / decode

    def encode(self, text: str, *, add_bos: bool = False, allow_special: bool = False) -> list[int]:
        """Token ids of `text`.

        add_bos: prepend the BOS token.
        allow_special: special-token strings written in `text` ("<|im_start|>") become their ids;
            otherwise they are encoded as the characters they are, like any other text.
        """
        ids = self._bos_prefix() if add_bos else []
        if allow_special:
            ids += self._encode_with_specials(text)
        else:
            ids += self._encode_plain(text)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """The text of `ids`; invalid UTF-8 (e.g. a cut-off character) becomes U+FFFD."""
        data = b"".join(self._bytes[self._check(i)] for i in ids if not (skip_special and i in self._special_ids))
        return data.decode("utf-8", errors="replace")

    # ----------------------------------------------------------------- chat

    @cached_property
    def chat_template(self) -> ChatTemplate | None:
        """The model's chat template, or None. Raises TemplateError if it does not compile."""
        if not self._chat_template_source:
            return None
        return self._make_template(self._chat_template_source)

    def with_chat_template(self, source: str) -> Tokenizer:
        """The same tokenizer rendering chats with the Jinja template `source` instead (a
        created model's TEMPLATE). Shares the vocabulary; this tokenizer is unchanged."""
        twin = copy.copy(self)
        twin._chat_template_source = source
        for name in ("chat_template", "uses_llama3_format"):  # cached from the old template
            twin.__dict__.pop(name, None)
        return twin

    @cached_property
    def uses_llama3_format(self) -> bool:
        """True when chats use the built-in Llama 3.1 format: a Llama 3 vocabulary, no template."""
        return not self._chat_template_source and all(self._ids.get(t) in self._special_ids for t in LLAMA3_SPECIALS)

    def encode_chat(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True, **extra: Any
    ) -> list[int]:
        """Token ids of a chat prompt rendered with the model's template.

        Without a template: the built-in Llama 3.1 format for a Llama 3 vocabulary, else ChatML.
        `tools` (OpenAI JSON-schema definitions) reach the template; a template that does not
        read `tools` gets them, and past tool calls and results, written into the messages as
        text (tool_prompt.py). Tool-call arguments given as JSON strings reach templates as dicts.
        Only the template's own text can produce special tokens: special-token strings inside
        messages or `extra` (tools, documents...) are tokenized as plain text.
        BOS is prepended when `add_bos` is set and the rendered text does not start with it.
        """
        messages = with_dict_arguments(messages)
        if self.uses_llama3_format:
            return self.encode_parts(llama3_chat_parts(messages, add_generation_prompt=add_generation_prompt, **extra))
        template = self.chat_template or self._make_template(CHATML_TEMPLATE)
        if not template.uses("tools"):
            messages = tools_as_text(messages, extra.pop("tools", None))
        if self._special_re is None:
            rendered = template.render(messages, add_generation_prompt=add_generation_prompt, **extra)
            ids = self._encode_plain(rendered)
        else:
            shield = SpecialShield(self._special_re, template.source, messages, extra)
            rendered = template.render(
                shield.protect(messages),
                add_generation_prompt=add_generation_prompt,
                **shield.protect(extra),
            )
            ids = self._encode_with_specials(rendered, restore=shield.restore)
        bos_text = self._tokens[self.bos_id] if self.bos_id is not None else None
        if self.add_bos and not (bos_text and rendered.startswith(bos_text)):
            ids = self._bos_prefix() + ids
        return ids

    def encode_parts(self, parts: Sequence[Part]) -> list[int]:
        """Ids of (text, is_special) parts: a special part is the token it names, the text
        between two specials is encoded as one plain run."""
        ids: list[int] = []
        run: list[str] = []
        for text, special in parts:
            if not special:
                run.append(text)
                continue
            token_id = self._ids.get(text)
            if token_id is None or token_id not in self._special_ids:
                raise TokenizerError(f"the vocabulary has no special token {text!r}")
            ids += self._encode_plain("".join(run))
            ids.append(token_id)
            run = []
        return ids + self._encode_plain("".join(run))

    # ----------------------------------------------------------------- internals

    def _make_template(self, source: str) -> ChatTemplate:
        def text_of(token_id: int | None) -> str:
            return self._tokens[token_id] if token_id is not None else ""

        return ChatTemplate(source, bos_token=text_of(self.bos_id), eos_token=text_of(self.eos_id))

    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        return self._bpe.encode(text, add_special_tokens=False).ids

    def _encode_with_specials(self, text: str, restore: Callable[[str], str] | None = None) -> list[int]:
        """Specials in `text` become their ids; the gaps, after `restore`, are plain text."""
        if self._special_re is None:
            return self._encode_plain(restore(text) if restore else text)
        ids: list[int] = []
        start = 0
        for match in self._special_re.finditer(text):
            gap = text[start : match.start()]
            ids += self._encode_plain(restore(gap) if restore else gap)
            ids.append(self._ids[match.group()])
            start = match.end()
        gap = text[start:]
        ids += self._encode_plain(restore(gap) if restore else gap)
        return ids

    def _bos_prefix(self) -> list[int]:
        if self.bos_id is None:
            raise InvalidParameterError("add_bos", "this vocabulary has no BOS token")
        return [self.bos_id]

    def _check(self, token_id: int) -> int:
        if not 0 <= token_id < len(self._tokens):
            raise InvalidParameterError(
                "token_id", f"{token_id} is outside the vocabulary (0..{len(self._tokens) - 1})"
            )
        return token_id


def _typed(meta: Mapping[str, Any], key: str, kind: type, element: type | None = None) -> Any:
    """meta[key] (None when absent) if it is a `kind` (of `element`s), else TokenizerError."""
    value = meta.get(key)
    if value is None:
        return None
    # bool is an int in Python; a GGUF bool is never a valid id, count or token type.
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if ok and element is not None:
        ok = all(isinstance(v, element) and not (element is int and isinstance(v, bool)) for v in value)
    if not ok:
        what = f"a list of {element.__name__}" if element else kind.__name__
        raise TokenizerError(f"the model file's {key} must be {what}, got {value!r:.60}")
    return value


def _checked_id(name: str, token_id: Any, vocab_size: int) -> int | None:
    """A special-token id from the file, or None if absent or out of range (with a warning)."""
    if token_id is None:
        return None
    i = int(token_id)
    if not 0 <= i < vocab_size:
        warnings.warn(
            f"tokenizer.ggml.{name}_token_id = {i} is outside the vocabulary; ignoring it",
            stacklevel=3,
        )
        return None
    return i
