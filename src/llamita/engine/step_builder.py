"""The compiled decode step by default: which mode a run asks for, and the background process
that builds a model shape's package (model/compiled.py) while eager decoding serves.

Modes: "background" (the default: use a package already built, else decode eagerly and start
one builder process), "foreground" (`--compile`, LLAMITA_COMPILE=1: build now, then answer)
and "off" (`--no-compile`, LLAMITA_COMPILE=0).

The builder is a separate process, not a thread: export and lowering are Python-heavy and
would stall decoding through the GIL. It runs at the lowest priority (nice 19) on one thread
and loads the model again from its file (the package is made from the model's structure, but
llamita's packed int4 layouts are only made by loading), so it holds a second copy of the
weights while it runs: about the model's in-memory size (docs/performance.md). It takes the
package's build lock before loading, so concurrent runs start at most one builder that does
work, and a failure is recorded next to the package (`decode-KEY.failed`, said once on stderr
by the next run) and not retried until the key (llamita's model code, torch, the CPU) changes.
Its output goes to `decode-KEY.log`.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Literal

import torch

from llamita.errors import InvalidParameterError
from llamita.model.compiled import (
    CompiledDecoder,
    build_in_progress,
    build_lock,
    read_failure,
    record_failure,
)

log = logging.getLogger(__name__)

COMPILE_ENV = "LLAMITA_COMPILE"
CompileMode = Literal["off", "background", "foreground"]
BuildState = Literal["ready", "building", "failed"]


def compile_mode(flag: bool | None) -> CompileMode:
    """The mode a run asks for: `flag` (True: --compile, False: --no-compile) if given, else
    $LLAMITA_COMPILE (0: off, 1: foreground, unset or "auto": background)."""
    if flag is not None:
        return "foreground" if flag else "off"
    value = os.environ.get(COMPILE_ENV, "").strip().lower()
    if value in ("", "auto"):
        return "background"
    if value in ("0", "false", "no", "off"):
        return "off"
    if value in ("1", "true", "yes", "on"):
        return "foreground"
    raise InvalidParameterError(COMPILE_ENV, "must be 0 (eager), 1 (build the compiled step in the "
                                f"foreground) or unset (build it in the background), got {value!r}")


def log_path(package: Path) -> Path:
    """Where a background build of `package` writes its output."""
    return package.with_suffix(".log")


def build_in_background(decoder: CompiledDecoder, model: Path, dtype: str,
                        batch: int = 1) -> tuple[BuildState, subprocess.Popen[bytes] | None]:
    """Use `decoder`'s package for `batch` rows if it is built; else start a builder process
    for it (unless one runs already or an earlier build failed; a failure not yet reported is
    logged once here). model, dtype: what the model was loaded with (load_model's arguments),
    for the builder to load it the same way. Returns the state and the process started, if any."""
    if decoder.ready(batch):
        return "ready", None
    package = decoder.package_path(batch)
    failure = read_failure(package)
    if failure is not None:
        if not failure.get("said"):
            log.warning("the compiled decode step could not be built, so decoding stays eager "
                        "(said once; tried again when llamita, torch or the model change; details in "
                        "%s): %s", log_path(package), failure.get("error"))
            record_failure(package, str(failure.get("error")), said=True)
        return "failed", None
    if build_in_progress(package):
        return "building", None
    return "building", _spawn(model, dtype, batch, package)


def _spawn(model: Path, dtype: str, batch: int, package: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    # The builder runs this very llamita (a checkout on PYTHONPATH included), on one thread.
    source = str(Path(__file__).resolve().parents[2])  # the folder holding llamita/
    env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
    env.update({"OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1", COMPILE_ENV: "0"})
    package.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path(package), "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "llamita.engine.step_builder", "--model", str(model), "--dtype", dtype,
             "--batch", str(batch), "--package", str(package)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)  # outlives the run that started it; Ctrl-C there does not stop it


def build(model: Path, dtype: str, batch: int, package: Path) -> Literal["built", "locked", "failed"]:
    """What the builder process does: take the build lock (or leave: another process has it),
    load the model, build `package` (or find it built), or record why not."""
    with build_lock(package, wait=False) as held:
        if not held:
            log.warning("another process builds %s", package)
            return "locked"
        try:
            from llamita.engine.loader import load_model

            loaded = load_model(model, dtype=dtype, device="cpu")
            decoder = CompiledDecoder(loaded.model, root=package.parent)
            if decoder.package_path(batch) != package:
                raise RuntimeError(f"the builder loads {model} as another model shape than the run "
                                   f"that started it ({decoder.package_path(batch).name} is not "
                                   f"{package.name})")
            decoder.build_now(batch, lock=False)
            return "built"
        except Exception as e:  # noqa: BLE001 - any failure is recorded, never retried blindly
            traceback.print_exc()
            record_failure(package, f"{type(e).__name__}: {e}")
            return "failed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamita.engine.step_builder",
                                     description="Build a compiled decode step package (background).")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--package", type=Path, required=True)
    args = parser.parse_args(argv)
    os.nice(19)  # the run that started it (and anything else) goes first
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return 1 if build(args.model, args.dtype, args.batch, args.package) == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
