"""Where the library keeps things: its own manifests (one small JSON file per name), and where
the Hugging Face cache and Ollama's store are, read from the environment at call time.

A manifest never holds weights: it names where they are (a file in the Hugging Face cache, an
Ollama blob, a path) so `llamita cp` makes an alias by reference and `rm` of a name frees only
what no other name uses.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamita.errors import ModelFileError

# 2: a created model's `settings` and `created_from` (version 1 files read as they are).
MANIFEST_VERSION = 2


def library_home() -> Path:
    """`LLAMITA_HOME` or ~/.cache/llamita: the library's manifests live under `models/`."""
    home = os.environ.get("LLAMITA_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "llamita"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub finds it (HF_HUB_CACHE, else HF_HOME/hub,
    else ~/.cache/huggingface/hub), read now: the library reads it once, at import."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "huggingface"
    )
    return Path(hf_home).expanduser() / "hub"


def hf_endpoint() -> str:
    """HF_ENDPOINT (a mirror, or the tests' hub on loopback) or huggingface.co, read now."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hf_token() -> str | None:
    """HF_TOKEN when set; None lets huggingface_hub use the token `hf auth login` saved."""
    return os.environ.get("HF_TOKEN") or None


def ollama_dir() -> Path:
    """Ollama's model store: OLLAMA_MODELS, else ~/.ollama/models."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


@dataclass
class Manifest:
    """A name in llamita's library. source: "hf" (files of `repo` at commit `revision` in the
    Hugging Face cache), "ollama", "embedded" or "path"; `path` is what the loader opens (a
    .gguf, the first part of a split GGUF, or a folder); `alias_of` is set by `cp` and `create`;
    `settings` (library/settings.py ModelSettings.to_dict) and `created_from` (its FROM) by
    `create`."""

    name: str
    source: str
    path: str
    repo: str | None = None
    revision: str | None = None
    files: list[str] = field(default_factory=list)
    size_bytes: int = 0
    quantization: str | None = None
    parameters: int | None = None
    alias_of: str | None = None
    settings: dict[str, Any] | None = None
    created_from: str | None = None
    created: float = field(default_factory=time.time)
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, where: Path) -> Manifest:
        try:
            data: dict[str, Any] = json.loads(text)
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except (ValueError, TypeError) as e:
            raise ModelFileError(
                f"{where}: a damaged library entry ({e}); delete the file to forget the name"
            ) from None


def manifest_dir() -> Path:
    return library_home() / "models"


def _file_of(name: str) -> Path:
    # Names hold `/` and `:`; quoting keeps one flat folder and a reversible file name.
    return manifest_dir() / (urllib.parse.quote(name, safe="") + ".json")


def read_manifests() -> list[Manifest]:
    """Every manifest in the library, in name order; damaged files are skipped, not fatal:
    one bad entry must not hide the rest of the list."""
    folder = manifest_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            found.append(Manifest.from_json(path.read_text(encoding="utf-8"), path))
        except (ModelFileError, OSError):
            continue
    return sorted(found, key=lambda m: m.name)


def find_manifest(name: str) -> Manifest | None:
    path = _file_of(name)
    if not path.is_file():
        return None
    return Manifest.from_json(path.read_text(encoding="utf-8"), path)


def write_manifest(manifest: Manifest) -> Path:
    """Write atomically (temporary file + rename): an interrupted write leaves the old entry."""
    path = _file_of(manifest.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def delete_manifest(name: str) -> bool:
    try:
        _file_of(name).unlink()
        return True
    except FileNotFoundError:
        return False
