"""`llamita create NAME -f Modelfile`: a new library name for a model plus the Modelfile's
settings. The manifest points where the base's weights are (never a copy); a base that is itself
a created model lends its settings, under the new ones."""

from __future__ import annotations

import os
from pathlib import Path

from llamita.errors import ModelFileError, ModelfileError
from llamita.library.local import find_local
from llamita.library.manage import library_name, manifest_for, manifest_for_path
from llamita.library.modelfile import Modelfile
from llamita.library.names import parse_name
from llamita.library.settings import ModelSettings
from llamita.library.store import Manifest, find_manifest, write_manifest

ADAPTER_CONFIG = "adapter_config.json"  # what makes a folder a PEFT adapter


def expand_path(text: str, folder: Path) -> Path:
    """A path as a Modelfile means it (Ollama's rule): `~` is home, a relative path is relative
    to the Modelfile's folder."""
    path = Path(text).expanduser()
    return (path if path.is_absolute() else folder / path).resolve()


def from_path(modelfile: Modelfile, folder: Path) -> Path | None:
    """The file or folder FROM names, or None when FROM is a model name. As Ollama: FROM is a
    path when one exists there; a name that can only be a path must exist."""
    candidate = expand_path(modelfile.from_, folder)
    if candidate.exists():
        return candidate
    if parse_name(modelfile.from_).kind == "path":
        raise ModelfileError(
            f"FROM {modelfile.from_}: no model file or folder at {candidate}", modelfile.line_of("FROM")
        )
    return None


def create_model(name: str, modelfile: Modelfile, folder: Path | None = None) -> Manifest:
    """Name `name` the model FROM names with the Modelfile's settings; `folder` is where relative
    paths start (the Modelfile's folder; default the working directory). A name already used by
    a created model is replaced (as `ollama create` does); any other is refused. The base must
    be on this machine: `llamita create` pulls a remote name first."""
    folder = Path.cwd() if folder is None else folder
    target, adapters = check_creatable(name, modelfile, folder)
    path = from_path(modelfile, folder)
    base_settings = None
    if path is not None:
        manifest = manifest_for_path(target, path)
    else:
        found = find_local(modelfile.from_)
        if found is None:
            raise ModelFileError(
                f"FROM {modelfile.from_}: the model is not on this machine (`llamita pull "
                f"{modelfile.from_}` fetches it; `llamita create` pulls it itself)"
            )
        manifest = manifest_for(target, found)
        base_settings = found.settings
    own = ModelSettings(
        modelfile.settings.parameters,
        modelfile.settings.system,
        modelfile.settings.template,
        modelfile.settings.messages,
        adapters,
        modelfile.settings.license,
    )
    manifest.settings = own.layered_over(base_settings).to_dict()
    manifest.created_from = modelfile.from_
    write_manifest(manifest)
    return manifest


def check_creatable(name: str, modelfile: Modelfile, folder: Path) -> tuple[str, tuple[str, ...]]:
    """What `create_model` checks before it looks for FROM: the library name `name` becomes (not
    one `llamita create` did not make) and the ADAPTERs' absolute paths (each a LoRA adapter).
    The server runs it before it pulls a missing FROM, so a bad body is refused first."""
    target = library_name(name)
    existing = find_manifest(target)
    if existing is not None and existing.settings is None:
        raise ModelFileError(
            f"'{target}' already names a model that `llamita create` did not make; "
            f"`llamita rm {target}` first, or pick another name"
        )
    return target, tuple(_adapter(a, folder, modelfile.line_of("ADAPTER", a)) for a in modelfile.settings.adapters)


def _adapter(text: str, folder: Path, line: int | None) -> str:
    """An ADAPTER's absolute path, checked to be what llamita loads as a LoRA adapter: a GGUF
    LoRA file or a PEFT folder (adapter_config.json + adapter_model.safetensors)."""
    path = expand_path(text, folder)
    if path.is_dir():
        if not (path / ADAPTER_CONFIG).is_file():
            raise ModelfileError(
                f"ADAPTER {text}: the folder {path} has no {ADAPTER_CONFIG} (a PEFT adapter folder has one)", line
            )
    elif path.is_file():
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelfileError(
                    f"ADAPTER {text}: {path} is not a GGUF file (a LoRA adapter is a GGUF LoRA file or a PEFT folder)",
                    line,
                )
    else:
        raise ModelfileError(f"ADAPTER {text}: nothing at {path}", line)
    return os.fspath(path)
