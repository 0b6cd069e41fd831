"""How much memory the server may use for models in all (`--max-memory`'s default). What one
model takes is jobs/memory.py's `served_bytes`."""

from __future__ import annotations

import os

# The share of the memory available at start that models may take by default: the rest is
# left to the runtime, activations and the rest of the machine.
DEFAULT_MEMORY_SHARE = 0.8


def available_memory() -> int:
    """Bytes the system could give this process now: Linux's MemAvailable (free memory plus
    caches it can drop), else the free physical pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_max_memory(already_loaded: int) -> int:
    """--max-memory's default: 80% of the memory available once the default model is loaded,
    plus what that model already takes (it counts against the limit too)."""
    return already_loaded + int(DEFAULT_MEMORY_SHARE * available_memory())


def give_back_memory() -> None:
    """After a model is unloaded: free its objects now and hand the memory back to the system.
    glibc keeps freed heap for reuse (a 135M model's 260 MB stayed resident, measured with
    benchmarks/model_pool.py) until malloc_trim; CUDA's caching allocator until empty_cache."""
    import ctypes
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the allocator decides
        pass
