"""llamita's NEON kernels (kernels/csrc/neon.h), built for AArch64 with Debian's cross compiler
and run under qemu-user: tests/kernels/neon_harness.cpp checks every layout at 1, 2, 3, 8 and
13 rows against a double-precision statement of its own (and the activation quantizer byte
for byte), so the ARM arithmetic is proven on machines without an ARM CPU. On an AArch64
machine with the dot-product extension the harness runs natively."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "src" / "llamita" / "kernels" / "csrc"
HARNESS = Path(__file__).with_name("neon_harness.cpp")
SYSROOT = Path("/usr/aarch64-linux-gnu")


def _toolchain() -> tuple[str, list[str]]:
    """The compiler and the command prefix that runs its output; skips when either is missing."""
    if platform.machine() in ("aarch64", "arm64"):
        compiler = shutil.which("g++")
        if compiler is None:
            pytest.skip("no C++ compiler (g++) to build the NEON harness")
        return compiler, []
    compiler, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    if compiler is None or qemu is None:
        pytest.skip(
            "the NEON kernels need an AArch64 cross compiler and qemu to run here "
            "(apt-get install g++-aarch64-linux-gnu qemu-user; .ci/run installs them)"
        )
    return compiler, [qemu, "-L", str(SYSROOT)]


def test_neon_kernels_match_their_double_statement(tmp_path: Path) -> None:
    compiler, runner = _toolchain()
    exe = tmp_path / "neon_harness"
    build = subprocess.run(
        [
            compiler,
            "-O2",
            "-std=c++17",
            "-march=armv8.2-a+dotprod",
            "-Wall",
            "-Werror",
            f"-I{CSRC}",
            str(HARNESS),
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    done = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "failures: 0" in done.stdout, done.stdout[-3000:] + done.stderr[-1000:]
    assert done.stdout.count("max err/bound") == 25  # 5 layouts x 5 row counts
