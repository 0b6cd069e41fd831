"""Ollama's store, written the way `ollama pull` leaves it, for tests that read it in place."""

from __future__ import annotations

import json
from pathlib import Path


def write_ollama_model(
    root: Path,
    name: str,
    tag: str,
    gguf_path: Path,
    *,
    template: str | None = None,
    params: dict | None = None,
    license_text: str | None = None,
) -> Path:
    """Ollama's store layout for one model: blobs/sha256-HEX and manifests/registry.ollama.ai/
    library/NAME/TAG naming them (the model layer plus optional template, params, license)."""
    import hashlib

    layers = []

    def blob(data: bytes, kind: str) -> None:
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / f"sha256-{digest}").write_bytes(data)
        layers.append(
            {"mediaType": f"application/vnd.ollama.image.{kind}", "digest": f"sha256:{digest}", "size": len(data)}
        )

    blob(gguf_path.read_bytes(), "model")
    if template is not None:
        blob(template.encode(), "template")
    if params is not None:
        blob(json.dumps(params).encode(), "params")
    if license_text is not None:
        blob(license_text.encode(), "license")
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return manifest
