"""A pull onto a disk that is really full: a small tmpfs mounted for the test (Linux, root; the
tests skip where mounting is not allowed). Before a byte: the space check refuses, saying how
much is missing. Mid-download (another program fills the disk after the check): a DownloadError
that says the disk is full, the partial file kept, and the next pull resumes from it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llamita.errors import DownloadError
from llamita.library import pull as pull_module
from llamita.library.pull import pull

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mounts a tmpfs")


def _mount_tmpfs(where: Path, size: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path, monkeypatch) -> Iterator[Callable[[int], Path]]:
    """mount(size) -> a tmpfs of `size` bytes holding the Hugging Face cache (HF_HOME)."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / "small-disk"
        if os.geteuid() != 0 or not _mount_tmpfs(where, size):
            pytest.skip("mounting a tmpfs needs root and a mount namespace that allows it")
        mounted.append(where)
        monkeypatch.setenv("HF_HOME", str(where / "hf"))
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_refused_before_a_byte(hub, models, small_disk):
    small_disk(64 * 1024)
    need = models["q4"].stat().st_size
    with pytest.raises(
        DownloadError,
        match=r"not enough disk space .* it needs "
        rf"{need / 1e6:.1f} MB .* free [0-9.]+ MB more",
    ):
        pull("test/tiny-GGUF")
    assert not hub.served


def test_a_disk_that_fills_mid_download_keeps_the_partial_and_resumes(hub, models, small_disk, monkeypatch):
    disk = small_disk(1024 * 1024)
    size = models["q4"].stat().st_size
    filler = disk / "another-program.bin"
    real_check = pull_module.check_disk_space

    def check_then_fill(remote):
        real_check(remote)  # passes: the disk has room for the file now
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with open(filler, "wb") as f:  # ...then something else takes all but ~100 KB of it
            f.write(b"\0" * max(0, free - 100 * 1024))

    monkeypatch.setattr(pull_module, "check_disk_space", check_then_fill)
    with pytest.raises(DownloadError, match="disk .* is full.*pull again"):
        pull("test/tiny-GGUF")
    partials = list(disk.rglob("*.incomplete"))
    assert len(partials) == 1 and 0 < partials[0].stat().st_size < size
    kept = partials[0].stat().st_size

    filler.unlink()
    monkeypatch.setattr(pull_module, "check_disk_space", real_check)
    found = pull("test/tiny-GGUF")
    assert found.path.read_bytes() == models["q4"].read_bytes()
    # Two GETs in all: the first from byte 0, the second only for what the partial file lacked.
    # (Sorted: the hub records a GET when its handler ends, and the first one's handler may end
    # after the second's, once the abandoned connection is closed.)
    assert sorted(s.start for s in hub.served[("test/tiny-GGUF", "tiny-Q4_K_M.gguf")]) == [0, kept]
