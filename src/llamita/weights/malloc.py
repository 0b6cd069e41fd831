"""glibc's malloc while a model loads: large temporaries go back to the system when freed.

Loading makes many short-lived buffers of a few MB to a few tens of MB (dequantized slices,
packing scratch, the q/k/v and gate/up parts joined). glibc serves a request from its heap unless
it is above the mmap threshold, and that threshold rises by itself, up to 32 MiB, each time a
large mapped block is freed; heap memory freed between long-lived weights cannot be handed back,
so an 8B load ended with ~0.5 GB of freed heap still resident: the load's peak RSS was 1.15x
the file instead of 1.06x. During the load the threshold is held at 4 MiB; after it, it is set to
32 MiB, the value the automatic threshold climbs to anyway after the first large free.
Elsewhere than glibc (musl, macOS, Windows) this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
LOAD_MMAP_THRESHOLD = 4 << 20
AFTER_LOAD_MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


@contextlib.contextmanager
def large_frees_returned() -> Iterator[None]:
    """Within: allocations of 4 MiB or more are mapped on their own, so freeing one returns it."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, LOAD_MMAP_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, AFTER_LOAD_MMAP_THRESHOLD)
