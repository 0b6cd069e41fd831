"""Ollama's model store, read in place: `manifests/HOST/NAMESPACE/MODEL/TAG` (OCI-style JSON)
name their layers by digest, and `blobs/sha256-HEX` hold them. The model layer is a GGUF file
llamita opens directly; template, system prompt, parameters and license are small text layers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamita.library.store import ollama_dir

DEFAULT_REGISTRY = "registry.ollama.ai"
MEDIA = "application/vnd.ollama.image."


@dataclass
class OllamaModel:
    """One tag in Ollama's store: `path` is the GGUF blob of its model layer."""

    name: str
    path: Path
    size_bytes: int
    modified: float
    manifest: Path
    template: str | None = None
    system: str | None = None
    license: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def ollama_name(manifest: Path, root: Path) -> str:
    """Ollama's short spelling of a manifest path: `registry.ollama.ai/library/m/t` -> `m:t`,
    `registry.ollama.ai/ns/m/t` -> `ns/m:t`, `host/ns/m/t` -> `host/ns/m:t`."""
    host, *middle, model, tag = manifest.relative_to(root).parts
    if host == DEFAULT_REGISTRY:
        prefix = "" if middle == ["library"] else "/".join(middle) + "/"
    else:
        prefix = "/".join([host, *middle]) + "/"
    return f"{prefix}{model}:{tag}"


def _blob(root: Path, digest: str) -> Path:
    return root / "blobs" / digest.replace(":", "-")


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_ollama_model(manifest: Path, root: Path) -> OllamaModel | None:
    """The model a manifest under `root`/manifests describes, or None when it is not a model we can open (no model
    layer, a missing blob, a damaged manifest): such entries are skipped, never fatal."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        layers = data.get("layers") or []
        by_type = {str(layer["mediaType"]).removeprefix(MEDIA): layer for layer in layers}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    layer = by_type.get("model")
    if not isinstance(layer, dict) or not isinstance(layer.get("digest"), str):
        return None
    blob = _blob(root, layer["digest"])
    if not blob.is_file():
        return None
    found = OllamaModel(
        ollama_name(manifest, root / "manifests"), blob, blob.stat().st_size, manifest.stat().st_mtime, manifest
    )
    for kind in ("template", "system", "license"):
        part = by_type.get(kind)
        if isinstance(part, dict) and isinstance(part.get("digest"), str):
            setattr(found, kind, _text(_blob(root, part["digest"])))
    params = by_type.get("params")
    if isinstance(params, dict) and isinstance(params.get("digest"), str):
        try:
            value = json.loads(_text(_blob(root, params["digest"])) or "{}")
            found.parameters = value if isinstance(value, dict) else {}
        except ValueError:
            pass
    return found


def ollama_models() -> list[OllamaModel]:
    """Every model in Ollama's store (OLLAMA_MODELS or ~/.ollama/models), in name order."""
    root = ollama_dir()
    manifests = root / "manifests"
    if not manifests.is_dir():
        return []
    found = []
    for path in manifests.rglob("*"):
        if path.is_file() and len(path.relative_to(manifests).parts) >= 3:
            model = read_ollama_model(path, root)
            if model is not None:
                found.append(model)
    return sorted(found, key=lambda m: m.name)
