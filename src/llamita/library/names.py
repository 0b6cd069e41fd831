"""What a model name means: a path on disk, a Hugging Face repository (with an optional
quantization tag), a short name from llamita's table, or a name in the local library.

The forms, as Ollama and llama.cpp spell them:
  ./model.gguf, /models/x, ~/x.gguf, C:\\x   a path (anything that exists, or looks like a file)
  hf.co/USER/REPO[:QUANT]                    a Hugging Face repository
  USER/REPO[:QUANT]                          the same, without the host
  llama3.2:1b                                a short name (catalog.py) or a local alias
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

HF_HOSTS = ("hf.co/", "huggingface.co/", "https://huggingface.co/", "https://hf.co/")
# Parts of a repository id as the Hub allows them (letters, digits, - _ .), at most 96 chars each.
_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_REPO_ID = re.compile(rf"^({_REPO_PART})/({_REPO_PART})$")
# A short name or alias: `family[:tag]` with no slash, as Ollama's library names.
_SHORT = re.compile(r"^[a-z0-9][a-z0-9._-]*(:[A-Za-z0-9._-]+)?$", re.IGNORECASE)
MODEL_SUFFIXES = (".gguf", ".pth", ".safetensors", ".bin")


@dataclass(frozen=True)
class ModelName:
    """A parsed name. kind: "path" (a file or folder), "hf" (repository `repo`, tag `quant`),
    or "short" (a short name or alias, `text` lower-cased)."""

    text: str
    kind: str
    repo: str | None = None
    quant: str | None = None

    @property
    def canonical(self) -> str:
        """The name the library stores: `hf.co/USER/REPO[:QUANT]` for repositories (quant in
        upper case, as the files spell it), the lower-cased short name otherwise."""
        if self.kind == "hf":
            return f"hf.co/{self.repo}" + (f":{self.quant.upper()}" if self.quant else "")
        if self.kind == "short":
            return self.text.lower()
        return self.text

    @property
    def is_remote(self) -> bool:
        """True for names that can be pulled (a repository or a short name), never for paths."""
        return self.kind != "path"


def parse_name(text: str | os.PathLike[str]) -> ModelName:
    """Tell the form of `text` apart. An existing file or folder is always a path, so a folder
    named `user/repo` in the working directory wins over the repository of that name. A Path
    object is read as its text: the CLI hands every --model over as one."""
    raw = os.fspath(text).strip()
    if looks_like_path(raw):
        return ModelName(raw, "path")
    lowered = raw.lower()
    for host in HF_HOSTS:
        if lowered.startswith(host):
            repo, quant = _split_tag(raw[len(host) :])
            if _REPO_ID.match(repo):
                return ModelName(raw, "hf", repo, quant)
            return ModelName(raw, "path")
    repo, quant = _split_tag(raw)
    if _REPO_ID.match(repo):
        return ModelName(raw, "hf", repo, quant)
    if _SHORT.match(raw):
        return ModelName(raw, "short")
    return ModelName(raw, "path")


def looks_like_path(text: str) -> bool:
    """A name that can only be a path: it exists, starts like one (`/`, `./`, `~`, a drive
    letter) or ends with a model file's extension."""
    if not text:
        return True
    if text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or re.match(r"^[A-Za-z]:[\\/]", text):
        return True
    if "\\" in text or text.lower().endswith(MODEL_SUFFIXES):
        return True
    try:
        return Path(text).exists()
    except OSError:  # a name too long or odd for the filesystem is no path we can open
        return False


def _split_tag(text: str) -> tuple[str, str | None]:
    """`repo:tag` -> (repo, tag); the tag is None when absent or empty."""
    repo, sep, tag = text.partition(":")
    return repo, (tag or None) if sep else None
