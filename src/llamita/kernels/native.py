"""llamita's own C++ kernels (kernels/csrc), built on first use against the installed torch.

They are torch operators (`torch.ops.llamita.*`), so eager code and the AOTInductor-compiled
decode step call them alike: `q4_vnni_mm` (int4 weights, kernels/int4.py layout "vnni"),
`q4k_vnni_mm` (Q4_K in its own scales, layout "vnni_k") and `q8_vnni_mm` (per-row int8 weights,
kernels/int8.py layout "vnni"), with `*_dequantize` expanding each layout to dense weights for
prefill; one shared library. Building
needs a C++ compiler (g++, as AOTInductor does) and takes a few seconds once; the library is
cached under `$XDG_CACHE_HOME/llamita/kernels` by a key over its sources, the compiler flags and
torch's version, and later processes only load it (milliseconds). Where the CPU lacks the
instructions, no compiler is found, the build fails, or `LLAMITA_NATIVE_KERNELS=0` is set,
`vnni_kernels()` returns False and callers keep torch's kernels; `vnni_kernels_skipped()` says
why.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "q4_vnni.cpp", CSRC / "q4k_vnni.cpp", CSRC / "q8_vnni.cpp")
HEADERS = (CSRC / "vnni.h",)
# The instructions the kernel uses, named rather than -march=native, so the cached library is
# the same for every CPU that has them (the key need not hash the CPU).
ISA = ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mfma"]
CPU_FLAGS = ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni")
_skipped: list[str] = []


def cache_root() -> Path:
    """$XDG_CACHE_HOME/llamita: where built artifacts live (kernels here, compiled decode steps
    under aoti/)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llamita"


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/llamita/kernels."""
    return cache_root() / "kernels"


# SIMD levels a run can be held to with LLAMITA_ISA, lowest first: each names the vector flags
# it keeps (every other flag of the CPU passes through). Forcing a lower level on a better CPU
# is how one machine tests every kernel level it has, and how a user rules a kernel out.
_SIMD_FLAGS = ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512dq",
               "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
               "asimddp")
ISA_LEVELS: dict[str, frozenset[str]] = {
    "generic": frozenset(),
    "avx2": frozenset({"avx", "avx2", "fma", "f16c"}),
    "avx_vnni": frozenset({"avx", "avx2", "fma", "f16c", "avx_vnni"}),
    "avx512_vnni": frozenset({"avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw",
                              "avx512dq", "avx512vl", "avx512_vnni"}),
    "native": frozenset(_SIMD_FLAGS),
}


@functools.cache
def _proc_cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86 / aarch64
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def isa_level() -> str:
    """The level LLAMITA_ISA holds this process to ("native": whatever the CPU has)."""
    level = os.environ.get("LLAMITA_ISA", "native").strip().lower() or "native"
    if level not in ISA_LEVELS:
        raise ValueError(f"LLAMITA_ISA must be one of {', '.join(ISA_LEVELS)}; got {level!r}")
    return level


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read), less the
    vector extensions above the level LLAMITA_ISA names."""
    flags = _proc_cpu_flags()
    hidden = frozenset(_SIMD_FLAGS) - ISA_LEVELS[isa_level()]
    return flags - hidden


def _compile_command(out: Path) -> list[str]:
    from torch.utils import cpp_extension  # ~0.2 s to import: only when building

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return ["g++", "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w", *ISA,
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            *[f"-I{p}" for p in cpp_extension.include_paths()], *map(str, SOURCES), "-o", str(out),
            *[f"-L{p}" for p in cpp_extension.library_paths()], "-lc10", "-ltorch_cpu"]


def library_key() -> str:
    h = hashlib.sha256()
    for f in (*SOURCES, *HEADERS):
        h.update(f.read_bytes())
    h.update(repr((ISA, torch.__version__, torch._C._GLIBCXX_USE_CXX11_ABI)).encode())
    return h.hexdigest()[:32]


def _build(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Built next to its final name and renamed: a concurrent or interrupted build never leaves
    # a half-written library under the name others load.
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        done = subprocess.run(_compile_command(Path(tmp)), capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-2000:] or f"g++ exited {done.returncode}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def vnni_kernels() -> bool:
    """True once `torch.ops.llamita.q4_vnni_mm` and `q8_vnni_mm` are loaded (built first if
    needed)."""
    reason = None
    path = cache_dir() / f"vnni-{library_key()}.so"
    if os.environ.get("LLAMITA_NATIVE_KERNELS", "1") == "0":
        reason = "LLAMITA_NATIVE_KERNELS=0"
    elif not set(CPU_FLAGS) <= cpu_flags():
        reason = "the CPU lacks AVX-512 VNNI"
    elif shutil.which("g++") is None and not path.exists():
        reason = "no C++ compiler (g++) to build it"
    if reason is None:
        try:
            if not path.exists():
                log.info("building llamita's int4/int8 kernels (once, a few seconds): %s", path)
                _build(path)
            torch.ops.load_library(str(path))
            _register_fake()
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            reason = f"building or loading {path.name} failed: {e}"
    if reason is not None:
        _skipped.append(reason)
        log.info("using torch's int4/int8 kernels: %s", reason)
        return False
    return True


def vnni_kernels_skipped() -> str | None:
    """Why `vnni_kernels()` is False (None while it is True or was not asked yet)."""
    return _skipped[-1] if _skipped else None


def _register_fake() -> None:
    # Shapes for torch.export / the compiled decode step, which trace without running it.
    @torch.library.register_fake("llamita::q4_vnni_mm")
    def _q4_shape(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], codes.shape[0]), dtype=torch.float32)

    @torch.library.register_fake("llamita::q8_vnni_mm")
    def _q8_shape(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], codes.shape[0]), dtype=torch.float32)

    @torch.library.register_fake("llamita::q4k_vnni_mm")
    def _q4k_shape(x: torch.Tensor, codes: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], codes.shape[0]), dtype=torch.float32)

    @torch.library.register_fake("llamita::q4k_vnni_dequantize")
    def _q4k_dense(codes: torch.Tensor, meta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return codes.new_empty((codes.shape[0], codes.shape[1] * 2), dtype=dtype)

    @torch.library.register_fake("llamita::q4_vnni_dequantize")
    def _q4_dense(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return codes.new_empty((codes.shape[0], codes.shape[1] * 2), dtype=dtype)

    @torch.library.register_fake("llamita::q8_vnni_dequantize")
    def _q8_dense(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return codes.new_empty(codes.shape, dtype=dtype)
