"""How many CPU threads a command runs the model with (`--threads`, every command that runs it).

torch's default is one thread per core. On a machine where other work keeps cores busy that
default collapses: OpenMP's threads spin at every barrier waiting for a peer the kernel has
descheduled, and each of the hundreds of small ops in a decode step pays for it. Measured on a
2-core AMD EPYC while other processes kept the load average at ~8 (default model, tg32, medians
of 3): 2 threads 1.0 tokens/s, 1 thread 31.3 tokens/s; an earlier report on such a machine
measured 1.5 against 10.6. llama.cpp and Ollama default to the physical cores and leave the user
to notice; here the default starts from torch's and leaves out the cores other work keeps busy
(the 1-minute load average when the command starts), never fewer than one.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from llamita.errors import InvalidParameterError

T = TypeVar("T")


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, as taskset/cgroups set it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def busy_cores() -> float:
    """Cores other work keeps busy: the 1-minute load average less this process's own share
    (its CPU time over its lifetime: a server or a test session that has run for minutes is
    part of the load it reads), 0 where it cannot be read."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    return max(0.0, load - _own_cores())


def _own_cores() -> float:
    """Cores this process has kept busy on average since it started (0 if unknown)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    alive = uptime - started
    return time.process_time() / alive if alive > 1.0 else 0.0


@functools.cache
def _torch_default() -> int:
    # Read once, before any set_num_threads: torch's own count (one per core, or OMP_NUM_THREADS).
    return torch.get_num_threads()


def default_threads() -> int:
    """torch's default (one per core) capped at the usable cores, less the busy ones; >= 1.
    An OMP_NUM_THREADS the user (or torchrun, which sets 1) chose is taken as it is."""
    if os.environ.get("OMP_NUM_THREADS"):
        return _torch_default()
    usable = usable_cores()
    cores = min(_torch_default(), usable)
    return max(1, min(cores, round(usable - busy_cores())))


def use_threads(threads: int | None) -> int:
    """Run torch's CPU ops with `threads` threads (None: `default_threads()`); returns the count."""
    if threads is None:
        threads = default_threads()
    elif threads < 1:
        raise InvalidParameterError("threads", f"must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def threads_label() -> str:
    """ "1 thread" / "N threads": how many torch runs on now, for the status lines."""
    n = torch.get_num_threads()
    return f"{n} thread" if n == 1 else f"{n} threads"


def on_fresh_thread(fn: Callable[[], T], name: str = "llamita-load") -> T:
    """fn() run on a new thread that ends when it returns; its result, or its exception raised here.

    For a process whose model work belongs to another thread (the server's engine thread): the
    thread that first runs a parallel torch op keeps a team of OpenMP workers for its lifetime,
    and GNU OpenMP (torch's on Linux) cuts every team's spin-wait to a few hundred cycles as soon
    as the workers of all teams together outnumber the cores. Workers that sleep at each barrier
    instead of spinning made the server's decode steps 2.3x (eager) to 3.3x (compiled) slower
    than the same steps on the main thread (default model, 2 threads, AMD EPYC 2 cores: 99 against
    320 tokens/s). A thread that ends frees its team, so loading here leaves the engine thread's
    team the only one.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread, re-raised there
            error.append(e)

    thread = threading.Thread(target=run, name=name, daemon=True)  # Ctrl-C during a load exits
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def to_fresh_thread(fn: Callable[..., T], *args: object) -> T:
    """asyncio.to_thread for work that runs torch ops (a search over a collection's vectors, an
    embedding model): the executor's threads live on, and a torch op there would leave a second
    OpenMP team beside the engine thread's (see on_fresh_thread)."""
    return await asyncio.to_thread(on_fresh_thread, functools.partial(fn, *args), "llamita-work")
