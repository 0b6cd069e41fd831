"""How each GGUF `tokenizer.ggml.pre` name splits text into words before BPE.

Byte-level BPE never merges across the pieces a pre-tokenizer cuts, so the split rules must be
exactly the ones the vocabulary was trained with. GGUF stores only a name for them; this table
mirrors llama.cpp (`src/llama-vocab.cpp`: the names in `llama_vocab::impl::load` and the regex
lists in `llm_tokenizer_bpe`). Each regex list is applied in order and every regex splits every
piece into its matches and the gaps between them: `tokenizers`' `Split(behavior="isolated")`.
Where llama.cpp rewrote a regex for its own engine (e.g. `(?i:'s|...)` spelled as `'[sS]|...`) we
use the original from the model's tokenizer.json, which Oniguruma (the `tokenizers` engine) runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from tokenizers import Regex, pre_tokenizers

# The GPT-2 regex. As the last rule it is applied by ByteLevel(use_regex=True) itself.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# Llama 3 (docs/llama-reference.md §3.1): digits in groups of up to 3, one leading non-letter joins a word.
LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2: as Llama 3 but every digit alone.
QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Mistral Nemo "tekken" and GPT-4o / Llama 4 (tokenizer.json originals).
TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# CJK ideographs, and the Hangul/other block DeepSeek splits off (written as escapes: the
# literal characters are easy to confuse with look-alikes).
_CJK_DEEPSEEK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"

DEEPSEEK_LLM = (
    "[\r\n]",
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1"
    "\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5"
    "\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a"
    "\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3"
    "\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115"
    "\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f"
    "\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    _CJK_DEEPSEEK,
    "\\p{N}+",
)

DEEPSEEK_CODER = ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_DEEPSEEK, r"\p{N}")

DEEPSEEK_V3 = (
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)

FALCON = (
    r"[\p{P}\$\+<=>\^~\|`]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    "[0-9][0-9][0-9]",
)

BLOOM = (" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+",)


@dataclass(frozen=True)
class PreTokenizerSpec:
    """Split rules for one family of `tokenizer.ggml.pre` names.

    regexes: applied in order, each one splitting every piece (matches and gaps kept).
    ignore_merges: a piece that is itself a vocabulary entry becomes that token directly
        (tiktoken / llama.cpp behaviour for Llama 3).
    add_bos: llama.cpp's default for `add_bos` when the file does not say.
    """

    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False


_GPT2_SPEC = PreTokenizerSpec((GPT2,))
_LLAMA3_SPEC = PreTokenizerSpec((LLAMA3,), ignore_merges=True, add_bos=True)

_FAMILIES: tuple[tuple[tuple[str, ...], PreTokenizerSpec], ...] = (
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"), _LLAMA3_SPEC),
    (("dbrx", "smaug-bpe", "chatglm-bpe", "glm4"), PreTokenizerSpec((LLAMA3,))),
    (
        (
            "default",
            "gpt2",
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "jina-es",
            "jina-de",
            "jina-v2-es",
            "jina-v2-de",
            "jina-v1-en",
            "jina-v2-code",
            "roberta-bpe",
            "gigachat",
            "a.x-4.0",
            "mellum",
            "trillion",
            "exaone4",
            "granite-docling",
        ),
        _GPT2_SPEC,
    ),
    (
        ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"),
        PreTokenizerSpec((r"\p{N}", GPT2)),
    ),
    (("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan", "kormo"), PreTokenizerSpec((QWEN2,))),
    (("tekken",), PreTokenizerSpec((TEKKEN,), ignore_merges=True, add_bos=True)),
    (("gpt-4o", "llama4"), PreTokenizerSpec((GPT4O,))),
    (("deepseek-llm",), PreTokenizerSpec(DEEPSEEK_LLM)),
    (("deepseek-coder",), PreTokenizerSpec(DEEPSEEK_CODER)),
    (("deepseek-v3",), PreTokenizerSpec(DEEPSEEK_V3)),
    (("falcon",), PreTokenizerSpec(FALCON)),
    (("bloom", "poro-chat", "gpt3-finnish"), PreTokenizerSpec(BLOOM)),
    (("viking",), PreTokenizerSpec(BLOOM + (r"\p{N}",))),
)

PRE_TOKENIZER_SPECS: dict[str, PreTokenizerSpec] = {name: spec for names, spec in _FAMILIES for name in names}


def pre_tokenizer_spec(pre: str | None) -> PreTokenizerSpec:
    """The split rules for a `tokenizer.ggml.pre` value; GPT-2's, with a warning, if unknown.

    A missing name (old converters) means GPT-2 rules, as does "default".
    """
    if not pre:
        return _GPT2_SPEC
    spec = PRE_TOKENIZER_SPECS.get(pre)
    if spec is None:
        warnings.warn(
            f"unknown pre-tokenizer {pre!r} in tokenizer.ggml.pre; splitting text with the GPT-2 "
            "rules, so tokenization may differ from the model's training",
            stacklevel=2,
        )
        return _GPT2_SPEC
    return spec


def build_pre_tokenizer(spec: PreTokenizerSpec) -> pre_tokenizers.PreTokenizer:
    """A `tokenizers` pre-tokenizer: the regex splits, then the GPT-2 byte-to-unicode mapping."""
    regexes = list(spec.regexes)
    # ByteLevel's own regex is the GPT-2 one; use it for a trailing GPT-2 rule as HF does.
    use_byte_level_regex = regexes[-1] == GPT2
    if use_byte_level_regex:
        regexes.pop()
    steps: list[pre_tokenizers.PreTokenizer] = [
        pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in regexes
    ]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_byte_level_regex))
    return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
