"""A guard for tests that feed hostile input: fail (not hang) past a time limit, and make any
allocation past a memory headroom raise MemoryError instead of merely being slow."""

from __future__ import annotations

import contextlib
import resource
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def bounded(seconds: int, headroom: int = 1 << 30) -> Iterator[None]:
    """Raise TimeoutError after `seconds` (SIGALRM, main thread only) and cap new private memory
    at `headroom` bytes over what the process holds now (RLIMIT_DATA): a gigabyte-sized
    allocation made before a size check fails at once and shows up in the test."""

    def timeout(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = _vm_data() + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    old_handler = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)


def _vm_data() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmData in /proc/self/status")
