"""The models on this machine, from three places, read in place (nothing is copied): llamita's
own library (names pulled or copied), the Hugging Face cache, and Ollama's store; plus the
embedded default model. `find_local` turns a name into one of them; `resolve_model` into the
path the loader opens."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from llamita.errors import ModelFileError
from llamita.library.catalog import EMBEDDED, SHORT_NAMES, catalog_entry, default_model_path
from llamita.library.files import DEFAULT_QUANT, ModelFiles, gguf_models, quant_label, safetensors_model
from llamita.library.names import ModelName, parse_name
from llamita.library.ollama import OllamaModel, ollama_models
from llamita.library.settings import ModelSettings
from llamita.library.store import Manifest, find_manifest, hf_cache_dir, read_manifests


@dataclass
class LocalModel:
    """A runnable model. source: "llamita" (a library name), "huggingface" (found in the HF
    cache), "ollama" or "embedded". `path` is what the loader opens."""

    name: str
    source: str
    path: Path
    size_bytes: int
    modified: float
    quantization: str | None = None
    repo: str | None = None
    manifest: Manifest | None = None
    ollama: OllamaModel | None = None
    files: tuple[Path, ...] = ()  # every file of the model (all parts, a folder's files)

    @property
    def settings(self) -> ModelSettings | None:
        """A created model's settings (`llamita create`), or None."""
        m = self.manifest
        return ModelSettings.from_dict(m.settings) if m is not None and m.settings is not None else None


def _from_manifest(m: Manifest) -> LocalModel:
    path = Path(m.path)
    try:  # a created model was made when `create` ran, whatever the age of its weights
        modified = m.created if m.settings is not None else os.stat(path).st_mtime
    except OSError:
        modified = m.created
    return LocalModel(m.name, "llamita", path, m.size_bytes, modified, m.quantization, m.repo, m)


def _from_ollama(o: OllamaModel) -> LocalModel:
    return LocalModel(
        o.name, "ollama", o.path, o.size_bytes, o.modified, quant_label(o.name), ollama=o, files=(o.path,)
    )


def _embedded() -> LocalModel | None:
    try:
        path = default_model_path()
    except ModelFileError:
        return None
    return LocalModel(
        EMBEDDED,
        "embedded",
        path,
        path.stat().st_size,
        path.stat().st_mtime,
        SHORT_NAMES[EMBEDDED].quant,
        files=(path,),
    )


def hf_cache_models() -> list[LocalModel]:
    """Every model in the Hugging Face cache: each GGUF (`hf.co/USER/REPO:QUANT`) and each
    safetensors folder (`hf.co/USER/REPO`) of each cached revision a ref (`main`) points to."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(hf_cache_dir())
    except (CacheNotFound, OSError):
        return []
    found = []
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        revisions = [r for r in repo.revisions if r.refs] or sorted(repo.revisions, key=lambda r: r.last_modified)[-1:]
        for rev in revisions:
            by_name = {f.file_path.relative_to(rev.snapshot_path).as_posix(): f for f in rev.files}
            groups: list[ModelFiles] = gguf_models(by_name)
            folder = safetensors_model(by_name)
            if folder is not None and _is_llama_folder(rev.snapshot_path):
                groups.append(folder)  # the cache also holds other tools' BERTs and such
            for group in groups:
                files = [by_name[n] for n in group.files]
                tag = (group.quant or Path(group.primary).stem) if group.kind == "gguf" else None
                name = f"hf.co/{repo.repo_id}" + (f":{tag}" if tag else "")
                path = rev.snapshot_path / (group.primary if group.kind == "gguf" else "")
                found.append(
                    LocalModel(
                        name,
                        "huggingface",
                        path,
                        sum(f.size_on_disk for f in files),
                        max(f.blob_last_modified for f in files),
                        group.quant,
                        repo.repo_id,
                        files=tuple(f.file_path for f in files),
                    )
                )
    return sorted(found, key=lambda m: m.name)


def _is_llama_folder(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and (
        config.get("model_type") == "llama" or "LlamaForCausalLM" in (config.get("architectures") or [])
    )


def local_models() -> list[LocalModel]:
    """Every model on this machine. A model pulled by llamita lies in the HF cache too and
    shows under its library name only (as does one a `cp` named); Ollama's tags always show."""
    models = [_from_manifest(m) for m in read_manifests()]
    seen = {m.path.resolve() for m in models if m.path.exists()}
    embedded = _embedded()
    if embedded is not None and not any(m.name == EMBEDDED for m in models):
        models.append(embedded)
    names = {m.name for m in models}
    for o in ollama_models():
        if o.name not in names:
            models.append(_from_ollama(o))
    for h in hf_cache_models():  # shown under a library name when one points to it
        if h.path.resolve() not in seen and h.name not in names:
            models.append(h)
    return models


def find_local(name: str | ModelName) -> LocalModel | None:
    """The local model a name means, or None. Order: a library name, the embedded default,
    an Ollama tag, the Hugging Face cache; a repository without a tag picks the local Q4_K_M,
    else its only local model; a short name also finds its repository's file in the HF cache."""
    parsed = parse_name(name) if isinstance(name, str) else name
    if parsed.kind == "path":
        return None
    wanted = {parsed.canonical, parsed.text}
    entry = catalog_entry(parsed.text) if parsed.kind == "short" else None
    if entry is not None:
        wanted.add(entry.name)
    for key in wanted:
        manifest = find_manifest(key)
        if manifest is not None:
            return _from_manifest(manifest)
    if entry is not None and entry.repo is None:
        return _embedded()
    ollama = ollama_models()
    tags = set(wanted) | {w + ":latest" for w in wanted if ":" not in w.rsplit("/", 1)[-1]}
    for o in ollama:
        if o.name in tags or o.name.lower() in {t.lower() for t in tags}:
            return _from_ollama(o)
    repo, quant = (
        (parsed.repo, parsed.quant)
        if parsed.kind == "hf"
        else ((entry.repo, entry.quant) if entry is not None else (None, None))
    )
    if repo is None:
        return None
    same_repo = [
        _from_manifest(m) for m in read_manifests() if m.repo and m.alias_of is None and m.repo.lower() == repo.lower()
    ]
    paths = {m.path for m in same_repo}
    same_repo += [
        m for m in hf_cache_models() if m.repo is not None and m.repo.lower() == repo.lower() and m.path not in paths
    ]
    if quant is not None:
        same_repo = [m for m in same_repo if (m.quantization or "").upper() == quant.upper()]
    preferred = [m for m in same_repo if m.quantization == DEFAULT_QUANT]
    if len(preferred) >= 1:
        return preferred[0]
    return same_repo[0] if len(same_repo) == 1 else None


def resolve_model(name: str | os.PathLike[str]) -> Path:
    """The path the loader opens for `name` (a path, or a local model's file or folder).
    Never downloads; a name that is not local says how to get it."""
    return resolve_model_settings(name)[0]


def resolve_model_settings(name: str | os.PathLike[str]) -> tuple[Path, ModelSettings | None]:
    """`resolve_model`, and the settings a created model (`llamita create`) brings with it:
    None for any other name or a path."""
    parsed = parse_name(name)
    if parsed.kind == "path":
        return Path(parsed.text).expanduser(), None
    found = find_local(parsed)
    if found is not None:
        if not found.path.exists():
            raise ModelFileError(
                f"'{found.name}' points to {found.path}, which no longer exists: "
                f"`llamita pull {found.name}` fetches it again, `llamita rm "
                f"{found.name}` forgets it"
            )
        return found.path, found.settings
    if parsed.kind == "hf" or catalog_entry(parsed.text) is not None:
        raise ModelFileError(
            f"model '{parsed.text}' is not on this machine: `llamita pull "
            f"{parsed.text}` downloads it (`llamita run` pulls it first)"
        )
    raise ModelFileError(
        f"model '{parsed.text}' not found: it is not a file, not in the library "
        f"(`llamita list`), and not a known name ({', '.join(SHORT_NAMES)}); a "
        "Hugging Face repository is written USER/REPO[:QUANT]"
    )
