"""The Hugging Face Hub through `huggingface_hub`: which files a repository's model needs
(with sizes and SHA-256 from its metadata), and downloading one file into the HF cache with
resume, a progress bar, a checksum and a check of its content before the cache takes it.

The endpoint, cache folder and token are read from the environment at each call (HF_ENDPOINT,
HF_HOME / HF_HUB_CACHE, HF_TOKEN) and passed explicitly: huggingface_hub reads them once, when
it is imported. huggingface_hub is itself imported only here, and only when the Hub is used.

Why not plain `hf_hub_download` for the weights: since huggingface_hub 1.x its partial file has
a name unique to the process and is deleted when the download fails, so an interrupted pull of a
5 GB file starts again from zero. Here the partial file keeps the name older versions used,
`blobs/<etag>.incomplete`, and the next pull resumes it with huggingface_hub's own `http_get`
(Range requests, retries, its errors); the cache layout and the snapshot link stay
huggingface_hub's (`hf_hub_download` makes the link once the blob is in place).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamita.errors import DownloadError, LlamitaError, ModelFileError
from llamita.library.files import ModelFiles, choose_gguf, gguf_models, safetensors_model
from llamita.library.store import hf_cache_dir, hf_endpoint, hf_token

HASH_CHUNK = 1 << 22  # 4 MiB reads while hashing a downloaded file


@dataclass(frozen=True)
class RemoteFile:
    """A file of a repository at one commit: size and, for LFS files (weights), its SHA-256."""

    name: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class RemoteModel:
    """The files of the model a name picks in `repo` at commit `revision`."""

    repo: str
    revision: str
    model: ModelFiles
    files: tuple[RemoteFile, ...]

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)


@contextlib.contextmanager
def hub_errors(repo: str) -> Iterator[None]:
    """huggingface_hub's and the network's errors as DownloadError with what to do next."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"https://huggingface.co/{repo}"
    access = (
        f"{repo} needs permission: accept its license at {page} with your account, then "
        "set HF_TOKEN to one of its access tokens (https://huggingface.co/settings/tokens)"
    )
    try:
        yield
    except LlamitaError:
        raise
    except GatedRepoError:
        raise DownloadError(access) from None
    except RepositoryNotFoundError:
        hint = "" if hf_token() else " or it is private or gated: set HF_TOKEN to a token that can read it"
        raise DownloadError(f"repository {repo} not found on {hf_endpoint()}{hint}") from None
    except (RevisionNotFoundError, EntryNotFoundError) as e:
        raise DownloadError(f"{repo}: {str(e).splitlines()[0]}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise DownloadError(access) from None
        raise DownloadError(f"{repo}: the Hub answered {status}: {str(e).splitlines()[0]}") from None
    except LocalEntryNotFoundError as e:
        raise DownloadError(
            f"cannot reach {hf_endpoint()} ({str(e).splitlines()[0]}); check the "
            "network and pull again: it resumes where it stopped"
        ) from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DownloadError(
                f"the disk holding {hf_cache_dir()} is full: free some space (or set "
                "HF_HOME to a folder on a larger disk) and pull again: it resumes "
                "where it stopped"
            ) from None
        raise DownloadError(f"download from {hf_endpoint()} failed: {e}; pull again to resume") from None
    except Exception as e:  # httpx2's network errors have no common base we can import cheaply
        if type(e).__module__.startswith(("httpx", "httpcore")):
            raise DownloadError(
                f"cannot reach {hf_endpoint()} ({e}); check the network and pull again: it resumes where it stopped"
            ) from None
        raise


def remote_model(repo: str, quant: str | None) -> RemoteModel:
    """The model `repo` holds for tag `quant`: a GGUF (split ones whole) when the repository
    has .gguf files or a tag is given, else its safetensors folder."""
    from huggingface_hub import HfApi

    with hub_errors(repo):
        info = HfApi(endpoint=hf_endpoint(), token=hf_token()).model_info(repo, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings or []}
    where = f"hf.co/{repo}"
    ggufs = gguf_models(siblings)
    folder = safetensors_model(siblings)
    if quant is not None or ggufs or folder is None:
        if not ggufs and folder is None:
            raise ModelFileError(
                f"{where} has neither .gguf files nor a safetensors model "
                "(config.json + *.safetensors): nothing llamita can run"
            )
        model = choose_gguf(ggufs, quant, where)
    else:
        model = folder
    files = []
    for name in model.files:
        s = siblings[name]
        files.append(RemoteFile(name, int(s.size or (s.lfs.size if s.lfs else 0)), s.lfs.sha256 if s.lfs else None))
    if not info.sha:
        raise DownloadError(f"{where}: the Hub did not say which commit it serves")
    return RemoteModel(repo, info.sha, model, tuple(files))


def storage_folder(repo: str) -> Path:
    """The repository's folder in the HF cache (`models--USER--REPO`)."""
    from huggingface_hub.file_download import repo_folder_name

    return hf_cache_dir() / repo_folder_name(repo_id=repo, repo_type="model")


def snapshot_path(repo: str, revision: str, name: str) -> Path:
    return storage_folder(repo) / "snapshots" / revision / name


def partial_path(repo: str, sha256: str) -> Path:
    """Where a weight file's download in progress lives: LFS files' etag is their SHA-256."""
    return storage_folder(repo) / "blobs" / f"{sha256}.incomplete"


def missing_bytes(remote: RemoteModel) -> int:
    """Bytes still to download: files not in the cache, less what partial files already hold."""
    total = 0
    for f in remote.files:
        if snapshot_path(remote.repo, remote.revision, f.name).exists():
            continue
        have = 0
        if f.sha256 is not None:
            blob = storage_folder(remote.repo) / "blobs" / f.sha256
            if blob.exists():
                continue
            with contextlib.suppress(OSError):
                have = partial_path(remote.repo, f.sha256).stat().st_size
        total += max(f.size - have, 0)
    return total


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    remote: RemoteModel,
    file: RemoteFile,
    *,
    tqdm_class: Any = None,
    check: Callable[[Path], None] | None = None,
    status: Callable[[str], None] | None = None,
) -> Path:
    """Fetch one file into the HF cache and return its snapshot path. A weight (LFS) file
    resumes a partial download, must match its SHA-256 and pass `check` (which raises to
    refuse it) before it becomes a blob; a refused or corrupt file is deleted, so nothing
    half-written stays behind. Small files go through hf_hub_download as they are."""
    from huggingface_hub import hf_hub_download

    target = snapshot_path(remote.repo, remote.revision, file.name)
    if target.exists():
        return target

    def fetch() -> Path:
        return Path(
            hf_hub_download(
                remote.repo,
                file.name,
                revision=remote.revision,
                cache_dir=hf_cache_dir(),
                endpoint=hf_endpoint(),
                token=hf_token(),
            )
        )

    with hub_errors(remote.repo):
        if file.sha256 is not None:
            _fetch_blob(remote, file, tqdm_class, check, status or (lambda _: None))
        elif check is not None:  # a small file that decides whether the rest is fetched
            path = fetch()
            try:
                check(path)
            except BaseException:
                blob = path.resolve()
                path.unlink(missing_ok=True)  # refused: neither link nor blob stays
                blob.unlink(missing_ok=True)
                raise
            return path
        return fetch()


def _fetch_blob(
    remote: RemoteModel,
    file: RemoteFile,
    tqdm_class: Any,
    check: Callable[[Path], None] | None,
    say: Callable[[str], None],
) -> None:
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import WeakFileLock

    assert file.sha256 is not None
    blob = storage_folder(remote.repo) / "blobs" / file.sha256
    # huggingface_hub's own lock for this blob: a second pull of the same file (or another
    # tool's hf_hub_download) waits instead of appending to the same partial file.
    folder = repo_folder_name(repo_id=remote.repo, repo_type="model")
    lock = hf_cache_dir() / ".locks" / folder / f"{file.sha256}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):
        if not blob.exists():
            _fetch_locked(remote, file, blob, tqdm_class, check, say)


def _fetch_locked(
    remote: RemoteModel,
    file: RemoteFile,
    blob: Path,
    tqdm_class: Any,
    check: Callable[[Path], None] | None,
    say: Callable[[str], None],
) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    assert file.sha256 is not None
    url = hf_hub_url(remote.repo, file.name, revision=remote.revision, endpoint=hf_endpoint())
    meta = get_hf_file_metadata(url, token=hf_token(), endpoint=hf_endpoint())
    if meta.etag != file.sha256:
        # The blob would be named by the HEAD's etag: a mismatch means a different file.
        raise DownloadError(
            f"hf.co/{remote.repo}: {file.name} changed on the Hub while pulling "
            f"(etag {meta.etag}, listing {file.sha256}); pull again"
        )
    partial = partial_path(remote.repo, file.sha256)
    partial.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "ab") as f:
        resume = f.tell()
        if resume > file.size:  # a partial longer than the file is garbage: start again
            f.truncate(0)
            resume = 0
        http_get(
            meta.location,
            f,
            resume_size=resume,
            headers=build_hf_headers(token=hf_token()),
            expected_size=file.size,
            displayed_filename=Path(file.name).name,
            tqdm_class=tqdm_class,
        )
    say(f"verifying sha256 digest of {Path(file.name).name}")
    got = sha256_of(partial)
    if got != file.sha256:
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"hf.co/{remote.repo}: {file.name} does not match its SHA-256 (expected "
            f"{file.sha256}, got {got}); the file was deleted, pull again"
        )
    if check is not None:
        try:
            check(partial)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, blob)
