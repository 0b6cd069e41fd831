"""Which files of a repository make a model: the GGUF of a quantization (all parts of a split
one), or the files a Hugging Face safetensors folder needs. Works on file names alone, so the
same rules pick files from the Hub's listing and from a snapshot already in the cache."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from llamita.errors import ModelFileError
from llamita.weights.gguf_reader import SPLIT_NAME

DEFAULT_QUANT = "Q4_K_M"
# llama.cpp's quantization names as they appear in file names (Q4_K_M, IQ3_XXS, Q4_0_4_8, BF16 ...).
_QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32|FP16)(?![A-Za-z0-9])", re.IGNORECASE)
# What a safetensors folder needs besides its weights; the rest of a repository (Meta's
# original/ folder, .bin or .pth copies, ONNX exports, images) is never downloaded.
FOLDER_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "LICENSE",
    "LICENSE.txt",
    "LICENSE.md",
    "USE_POLICY.md",
)


@dataclass(frozen=True)
class ModelFiles:
    """The files of one model in a repository: `files[0]` is what the loader opens (the GGUF,
    its first part, or config.json for a folder); `quant` is the tag that names it."""

    kind: str  # "gguf" or "safetensors"
    files: tuple[str, ...]
    quant: str | None

    @property
    def primary(self) -> str:
        return self.files[0]


def quant_label(filename: str) -> str | None:
    """The quantization a GGUF file name states (`...-Q4_K_M.gguf` -> `Q4_K_M`), upper case;
    the last one wins (`Q8_0-imat-Q4_K_M` names the Q4_K_M file), None when it states none."""
    base = filename.rsplit("/", 1)[-1]
    match = SPLIT_NAME.match(base)
    stem = match["stem"] if match else base.removesuffix(".gguf").removesuffix(".GGUF")
    found = _QUANT.findall(stem)
    return found[-1].upper() if found else None


def gguf_models(names: Iterable[str]) -> list[ModelFiles]:
    """Every GGUF model among `names`: single files, and split models whose parts are all
    there (an incomplete split is left out: it cannot load). Sorted by first file."""
    singles: list[ModelFiles] = []
    splits: dict[tuple[str, str, str], list[tuple[str, str]]] = {}  # (folder, stem, count) -> (name, no)
    for name in names:
        if not name.lower().endswith(".gguf"):
            continue
        folder, _, base = name.rpartition("/")
        match = SPLIT_NAME.match(base)
        if match is None:
            singles.append(ModelFiles("gguf", (name,), quant_label(name)))
            continue
        key = (folder, match["stem"], match["count"])
        splits.setdefault(key, []).append((name, match["no"]))
    for (_, _, count), found in splits.items():
        found.sort()
        parts = [name for name, _ in found]
        if len(parts) == int(count) and found[0][1] == "00001":
            singles.append(ModelFiles("gguf", tuple(parts), quant_label(parts[0])))
    # mmproj files are vision projectors, not language models.
    return sorted((m for m in singles if "mmproj" not in m.primary.lower()), key=lambda m: m.primary)


def choose_gguf(models: list[ModelFiles], quant: str | None, where: str) -> ModelFiles:
    """The model a tag picks (case-insensitive); without a tag Q4_K_M if present, else the only
    one; otherwise a ModelFileError listing the quantizations that exist."""
    if not models:
        raise ModelFileError(f"{where} has no .gguf file")
    labels = sorted({m.quant or m.primary for m in models})
    if quant is not None:
        want = quant.upper()
        exact = [m for m in models if m.quant == want]
        if not exact:  # a tag that is part of the name but not the parsed label, e.g. "imat"
            exact = [m for m in models if want in m.primary.upper()]
        if len(exact) == 1:
            return exact[0]
        if not exact:
            raise ModelFileError(f"{where} has no {quant} file; it has: {', '.join(labels)}")
        raise ModelFileError(
            f"{where}: the tag {quant} matches {len(exact)} files "
            f"({', '.join(m.primary for m in exact)}); give the full quantization"
        )
    default = [m for m in models if m.quant == DEFAULT_QUANT]
    if len(default) == 1:
        return default[0]
    if len(models) == 1:
        return models[0]
    raise ModelFileError(f"{where} has {len(models)} GGUF files: pick one with :QUANT, one of {', '.join(labels)}")


def safetensors_model(names: Iterable[str]) -> ModelFiles | None:
    """config.json, the safetensors shards and the tokenizer files of a folder at the root of
    the repository, or None when there is no such folder."""
    root = [n for n in names if "/" not in n]
    if "config.json" not in root:
        return None
    weights = sorted(n for n in root if n.endswith(".safetensors"))
    if not weights:
        return None
    extra = [n for n in FOLDER_FILES[1:] if n in root]
    return ModelFiles("safetensors", ("config.json", *extra, *weights), None)
