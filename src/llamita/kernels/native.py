"""llamita's own C++ kernels (kernels/csrc), one source tree built per SIMD level, the best
level the CPU allows chosen at run time.

They are torch operators, so eager code and the AOTInductor-compiled decode step call them
alike: `q4_vnni_mm` (int4 weights, kernels/int4.py layout "vnni"), `q4k_vnni_mm` (Q4_K in its
own scales, layout "vnni_k"), `q6k_vnni_mm` (Q6_K in its own 6-bit codes and scales, layout
"vnni_q6k"), `q8_vnni_mm` (per-row int8 weights, kernels/int8.py layout
"vnni") and `q8b_vnni_mm` (GGML Q8_0 in its own blocks, layout "vnni_q8b"), with
`*_dequantize` expanding each layout to dense weights for prefill and `*_pack_ggml` packing
GGUF blocks at load. Every level works on the same packed layouts (the
name "vnni" is the layout's, not the instruction's), so loading and packing are shared:

  level        instructions                   operator namespace      sources
  avx512_vnni  AVX-512 F/BW/DQ/VL + VNNI      torch.ops.llamita        q4_vnni, q4k_vnni, q6k_vnni, q8_vnni
  avx_vnni     AVX2 + FMA + F16C + AVX-VNNI   torch.ops.llamita_avx_vnni   mm256 (vpdpbusd 256-bit)
  avx2         AVX2 + FMA + F16C              torch.ops.llamita_avx2       mm256 (maddubs + madd)
  neon_dotprod AArch64 NEON + dotprod         torch.ops.llamita_neon       mm_neon (sdot; neon.h)

(+ portable.cpp, attention.cpp and sampling.cpp in every level, pack.cpp in the x86 ones). The NEON level is checked on x86
machines too, without torch, by tests/kernels/test_neon_harness.py under qemu-user. Each level is its own shared library compiled with only its own
-m flags, so the cached file is the same for every CPU that has them; several levels can be
loaded in one process (the tests run every level the CPU has). `kernel_level()` is the best
level this CPU (as LLAMITA_ISA shows it) builds and loads, `kernel_ops()` its operators;
`kernel_level_skipped()` says why there is none. Building needs a C++ compiler (g++, as
AOTInductor does) and takes some seconds once per level; the library is cached under
`$XDG_CACHE_HOME/llamita/kernels` by a key over its sources, its flags and torch's version.
`LLAMITA_NATIVE_KERNELS=0` turns every level off (callers keep torch's kernels).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
HEADERS = (CSRC / "layout.h", CSRC / "common.h", CSRC / "vnni.h", CSRC / "simd256.h", CSRC / "neon.h")


class KernelOps(Protocol):
    """The operators of one level, as csrc/*.cpp declare them (`m.def`); a portable-only level
    (no SIMD matmul) lacks the *_mm ones."""

    def q4_vnni_mm(self, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor: ...
    def q4k_vnni_mm(self, x: torch.Tensor, codes: torch.Tensor, meta: torch.Tensor) -> torch.Tensor: ...
    def q6k_vnni_mm(self, x: torch.Tensor, codes: torch.Tensor, meta: torch.Tensor) -> torch.Tensor: ...
    def q8_vnni_mm(self, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor: ...
    def q8b_vnni_mm(self, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor: ...
    def q8b_vnni_dequantize(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...
    def q4_vnni_dequantize(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...
    def q4k_vnni_dequantize(self, codes: torch.Tensor, meta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...
    def q6k_vnni_dequantize(self, codes: torch.Tensor, meta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...
    def q8_vnni_dequantize(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...
    def q4_vnni_pack_ggml(
        self, raw: torch.Tensor, rows: int, cols: int, has_min: bool
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    def q4k_vnni_pack_ggml(self, raw: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def q6k_vnni_pack_ggml(self, raw: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def paged_decode_attention(
        self,
        q: torch.Tensor,
        k_pool: torch.Tensor,
        v_pool: torch.Tensor,
        tables: torch.Tensor,
        positions: torch.Tensor,
        scale: float,
    ) -> torch.Tensor: ...
    def sample_top_k(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class KernelLevel:
    """One SIMD level's library: what it is compiled from and with, what the CPU must have."""

    name: str
    namespace: str  # torch.ops.<namespace>.q4_vnni_mm ...
    sources: tuple[str, ...]  # files of csrc/
    flags: tuple[str, ...]  # the instructions named, never -march=native (the key must not hash the CPU)
    cpu_flags: frozenset[str]  # /proc/cpuinfo flags it needs
    machine: str = "x86_64"  # platform.machine() it builds for


_AVX2 = ("-mavx2", "-mfma", "-mf16c")
# Best first: kernel_level() takes the first that the CPU has and that builds.
KERNEL_LEVELS: tuple[KernelLevel, ...] = (
    KernelLevel(
        "avx512_vnni",
        "llamita",
        (
            "q4_vnni.cpp",
            "q4k_vnni.cpp",
            "q6k_vnni.cpp",
            "q8_vnni.cpp",
            "pack.cpp",
            "portable.cpp",
            "attention.cpp",
            "sampling.cpp",
        ),
        ("-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", *_AVX2),
        frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx2", "fma", "f16c"}),
    ),
    KernelLevel(
        "avx_vnni",
        "llamita_avx_vnni",
        ("mm256.cpp", "pack.cpp", "portable.cpp", "attention.cpp", "sampling.cpp"),
        (*_AVX2, "-mavxvnni"),
        frozenset({"avx2", "fma", "f16c", "avx_vnni"}),
    ),
    KernelLevel(
        "avx2",
        "llamita_avx2",
        ("mm256.cpp", "pack.cpp", "portable.cpp", "attention.cpp", "sampling.cpp"),
        _AVX2,
        frozenset({"avx2", "fma", "f16c"}),
    ),
    KernelLevel(
        "neon_dotprod",
        "llamita_neon",
        ("mm_neon.cpp", "portable.cpp", "attention.cpp", "sampling.cpp"),
        ("-march=armv8.2-a+dotprod",),
        frozenset({"asimd", "asimddp"}),
        machine="aarch64",
    ),
)
_BY_NAME = {level.name: level for level in KERNEL_LEVELS}
_skipped: dict[str, str] = {}  # level name -> why it is not loaded


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
_SIMD_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimddp",
)
ISA_LEVELS: dict[str, frozenset[str]] = {
    "generic": frozenset(),
    "avx2": frozenset({"avx", "avx2", "fma", "f16c"}),
    "avx_vnni": frozenset({"avx", "avx2", "fma", "f16c", "avx_vnni"}),
    "avx512_vnni": frozenset(
        {"avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}
    ),
    "neon_dotprod": frozenset({"asimddp"}),
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


def _compile_command(level: KernelLevel, out: Path) -> list[str]:
    from torch.utils import cpp_extension  # ~0.2 s to import: only when building

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        "g++",
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-fopenmp",
        "-w",
        *level.flags,
        f"-DLLAMITA_OPS={level.namespace}",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *[f"-I{p}" for p in cpp_extension.include_paths()],
        *[str(CSRC / name) for name in level.sources],
        "-o",
        str(out),
        *[f"-L{p}" for p in cpp_extension.library_paths()],
        "-lc10",
        "-ltorch_cpu",
    ]


def library_key(level: str = "avx512_vnni") -> str:
    """The cache key of a level's library: its sources, the headers, its flags, torch."""
    lv = _BY_NAME[level]
    h = hashlib.sha256()
    for f in (*[CSRC / name for name in lv.sources], *HEADERS):
        h.update(f.read_bytes())
    h.update(repr((lv.flags, lv.namespace, torch.__version__, torch._C._GLIBCXX_USE_CXX11_ABI)).encode())
    return h.hexdigest()[:32]


def _build(level: KernelLevel, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Built next to its final name and renamed: a concurrent or interrupted build never leaves
    # a half-written library under the name others load.
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        done = subprocess.run(_compile_command(level, Path(tmp)), capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-2000:] or f"g++ exited {done.returncode}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def level_ops(level: str) -> KernelOps | None:
    """The operators of one SIMD level (`torch.ops.<namespace>`), built first if needed; None
    where the CPU lacks its instructions, no compiler is found, the build fails or
    LLAMITA_NATIVE_KERNELS=0 (`kernel_level_skipped(level)` says which)."""
    lv = _BY_NAME[level]
    reason = None
    path = cache_dir() / f"{lv.name}-{library_key(level)}.so"
    missing = sorted(lv.cpu_flags - cpu_flags())
    if os.environ.get("LLAMITA_NATIVE_KERNELS", "1") == "0":
        reason = "LLAMITA_NATIVE_KERNELS=0"
    elif platform.machine() != lv.machine:
        reason = f"it is built for {lv.machine}, this machine is {platform.machine()}"
    elif missing:
        reason = f"the CPU lacks {', '.join(missing)}" + (
            f" (LLAMITA_ISA={isa_level()})" if isa_level() != "native" else ""
        )
    elif shutil.which("g++") is None and not path.exists():
        reason = "no C++ compiler (g++) to build it"
    if reason is None:
        try:
            if not path.exists():
                log.info("building llamita's %s kernels (once, some seconds): %s", lv.name, path)
                _build(lv, path)
            torch.ops.load_library(str(path))
            _register_fake(lv.namespace)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            reason = f"building or loading {path.name} failed: {e}"
    if reason is not None:
        _skipped[level] = reason
        log.info("llamita's %s kernels are off: %s", lv.name, reason)
        return None
    ops: KernelOps = getattr(torch.ops, lv.namespace)
    return ops


def kernel_level_skipped(level: str | None = None) -> str | None:
    """Why `level` (None: every level, i.e. why `kernel_level()` is None) is not loaded; None
    while it is, or was not asked yet."""
    if level is not None:
        return _skipped.get(level)
    if not _skipped:
        return None
    return "; ".join(f"{name}: {why}" for name, why in _skipped.items())


@functools.cache
def kernel_level() -> str | None:
    """The SIMD level of llamita's kernels in this process: the best of KERNEL_LEVELS that the
    CPU (as LLAMITA_ISA shows it) has and that builds and loads; None where none does (then
    `kernel_level_skipped()` says why, and callers keep torch's kernels)."""
    for lv in KERNEL_LEVELS:
        if level_ops(lv.name) is not None:
            return lv.name
    return None


def kernel_ops() -> KernelOps:
    """`torch.ops.<namespace>` of `kernel_level()`: q4_vnni_mm, q4k_vnni_mm, q8_vnni_mm, their
    *_dequantize and the *_pack_ggml ops. Raises RuntimeError where no level loads."""
    level = kernel_level()
    ops = None if level is None else level_ops(level)
    if ops is None:
        raise RuntimeError(f"llamita's native kernels are unavailable: {kernel_level_skipped()}")
    return ops


def kernel_summary() -> str:
    """One line for a user: the level in use, or why none is."""
    level = kernel_level()
    if level is not None:
        return f"llamita kernels: {level}"
    return f"llamita kernels: none ({kernel_level_skipped()}); torch's kernels instead"


def vnni_kernels() -> bool:
    """True once some level of llamita's kernels is loaded (built first if needed): the
    "vnni" layouts are usable, through `kernel_ops()`."""
    return kernel_level() is not None


def vnni_kernels_skipped() -> str | None:
    """Why `vnni_kernels()` is False (None while it is True or was not asked yet)."""
    return None if kernel_level() is not None else kernel_level_skipped()


def _register_fake(namespace: str) -> None:
    # Shapes for torch.export / the compiled decode step, which trace without running it.
    @torch.library.register_fake(f"{namespace}::paged_decode_attention")
    def _attention_shape(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: torch.Tensor, positions: torch.Tensor, scale: float
    ) -> torch.Tensor:
        return torch.empty_like(q)

    @torch.library.register_fake(f"{namespace}::q4_vnni_mm")
    def _q4_shape(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], codes.shape[0]), dtype=torch.float32)

    @torch.library.register_fake(f"{namespace}::q8_vnni_mm")
    def _q8_shape(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], codes.shape[0]), dtype=torch.float32)

    @torch.library.register_fake(f"{namespace}::q8b_vnni_mm")
    def _q8b_shape(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], codes.shape[0]), dtype=torch.float32)

    @torch.library.register_fake(f"{namespace}::q4k_vnni_mm")
    def _q4k_shape(x: torch.Tensor, codes: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], codes.shape[0]), dtype=torch.float32)

    @torch.library.register_fake(f"{namespace}::q6k_vnni_mm")
    def _q6k_shape(x: torch.Tensor, codes: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], codes.shape[0]), dtype=torch.float32)

    @torch.library.register_fake(f"{namespace}::q6k_vnni_dequantize")
    def _q6k_dense(codes: torch.Tensor, meta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return codes.new_empty((codes.shape[0], codes.shape[1] * 4 // 3), dtype=dtype)

    @torch.library.register_fake(f"{namespace}::q4k_vnni_dequantize")
    def _q4k_dense(codes: torch.Tensor, meta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return codes.new_empty((codes.shape[0], codes.shape[1] * 2), dtype=dtype)

    @torch.library.register_fake(f"{namespace}::q4_vnni_dequantize")
    def _q4_dense(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return codes.new_empty((codes.shape[0], codes.shape[1] * 2), dtype=dtype)

    @torch.library.register_fake(f"{namespace}::q8b_vnni_dequantize")
    def _q8b_dense(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return codes.new_empty(codes.shape, dtype=dtype)

    @torch.library.register_fake(f"{namespace}::q8_vnni_dequantize")
    def _q8_dense(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return codes.new_empty(codes.shape, dtype=dtype)
