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
import contextlib
import logging
import os
import resource
import subprocess
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from llamita.errors import InvalidParameterError
from llamita.model.compiled import (
    CompiledDecoder,
    build_in_progress,
    build_lock,
    read_failure,
    record_failure,
)
from llamita.model.compiled_paged import PagedCompiledDecoder

if TYPE_CHECKING:
    from llamita.engine.loader import LoadedModel
    from llamita.model.transformer import Transformer

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
    raise InvalidParameterError(
        COMPILE_ENV,
        "must be 0 (eager), 1 (build the compiled step in the "
        f"foreground) or unset (build it in the background), got {value!r}",
    )


def log_path(package: Path) -> Path:
    """Where a background build of `package` writes its output."""
    return package.with_suffix(".log")


@dataclass(frozen=True)
class StepSource:
    """How a builder process makes the same decoder as the run that starts it: the model's
    file or folder, loaded in the same dtype and form, and the cache layout of the step."""

    model: Path
    dtype: str  # "float32", "bfloat16"
    compact: bool  # load_model's `compact`
    block_size: int = 0  # 0: the static cache (model/compiled.py); else the paged cache's (LLMEngine)

    @classmethod
    def of(cls, loaded: LoadedModel, block_size: int = 0) -> StepSource:
        return cls(loaded.path, str(loaded.dtype).removeprefix("torch."), loaded.compact, block_size)

    def decoder(self, model: Transformer, root: Path | None = None, build: bool = True) -> CompiledDecoder:
        if self.block_size:
            return self.paged_decoder(model, root, build)
        return CompiledDecoder(model, root, build)

    def paged_decoder(self, model: Transformer, root: Path | None = None, build: bool = True) -> PagedCompiledDecoder:
        return PagedCompiledDecoder(model, self.block_size, root, build)


def build_in_background(
    decoder: CompiledDecoder, source: StepSource, batches: Sequence[int] = (1,)
) -> tuple[BuildState, subprocess.Popen[bytes] | None]:
    """Use `decoder`'s packages for `batches` rows if they are built; else start one builder
    process for those missing (unless one runs already or an earlier build failed; a failure
    not yet reported is logged once here). Returns the state and the process started, if any."""
    missing = [b for b in batches if not decoder.ready(b)]
    if not missing:
        return "ready", None
    state: BuildState = "building"
    wanted = []
    for batch in missing:
        package = decoder.package_path(batch)
        failure = read_failure(package)
        if failure is not None:
            if not failure.get("said"):
                log.warning(
                    "the compiled decode step could not be built, so decoding stays eager "
                    "(said once; tried again when llamita, torch or the model change; details "
                    "in %s): %s",
                    log_path(package),
                    failure.get("error"),
                )
                record_failure(package, str(failure.get("error")), said=True)
            state = "failed"
        elif not build_in_progress(package):
            wanted.append((batch, package))
    return state, _spawn(source, wanted) if wanted else None


def decode_label(decoder: CompiledDecoder | None, skipped: str | None = None, batches: Sequence[int] = (1,)) -> str:
    """What a status line says of how tokens are made: "compiled step" (its packages for
    `batches` rows are loaded), "eager", or "eager (why: `skipped`, building in the background,
    a failed build)". A package a builder has finished meanwhile is loaded here."""
    if decoder is None:
        return "eager" if skipped is None else f"eager ({skipped})"
    if all(decoder.ready(b) for b in batches):
        return "compiled step"
    failed = [decoder.package_path(b) for b in batches if read_failure(decoder.package_path(b)) is not None]
    if failed:
        return f"eager (the compiled step failed to build: {log_path(failed[0])})"
    return "eager (compiled step building in the background)"


def _spawn(source: StepSource, wanted: list[tuple[int, Path]]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    # The builder runs this very llamita (a checkout on PYTHONPATH included), on one thread.
    folder = str(Path(__file__).resolve().parents[2])  # the folder holding llamita/
    env["PYTHONPATH"] = os.pathsep.join([folder, *filter(None, [env.get("PYTHONPATH")])])
    env.update({"OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1", COMPILE_ENV: "0"})
    command = [
        sys.executable,
        "-m",
        "llamita.engine.step_builder",
        "--model",
        str(source.model),
        "--dtype",
        source.dtype,
        "--compact",
        str(int(source.compact)),
        "--block-size",
        str(source.block_size),
    ]
    for batch, package in wanted:
        command += ["--batch", str(batch), "--package", str(package)]
    package = wanted[0][1]
    package.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path(package), "wb") as out:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )  # outlives its run; Ctrl-C there does not stop it


def build(source: StepSource, wanted: list[tuple[int, Path]]) -> list[Literal["built", "locked", "failed"]]:
    """What the builder process does, for each (batch, package): take the package's build lock
    (or leave it: another process has it), load the model (once), build the package (or find it
    built), or record why not."""
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(build_lock(package, wait=False)) for _, package in wanted]
        results: list[Literal["built", "locked", "failed"]] = ["locked"] * len(wanted)
        if not any(held):
            log.warning("another process builds %s", ", ".join(str(p) for _, p in wanted))
            return results
        try:
            from llamita.engine.loader import load_model

            loaded = load_model(source.model, dtype=source.dtype, device="cpu", compact=source.compact)
            decoder = source.decoder(loaded.model, root=wanted[0][1].parent)
        except Exception as e:  # noqa: BLE001 - any failure is recorded, never retried blindly
            traceback.print_exc()
            for (_, package), mine in zip(wanted, held):
                if mine:
                    record_failure(package, f"{type(e).__name__}: {e}")
            return ["failed" if mine else "locked" for mine in held]
        for i, ((batch, package), mine) in enumerate(zip(wanted, held)):
            if not mine:
                continue
            try:
                if decoder.package_path(batch) != package:
                    raise RuntimeError(
                        f"the builder loads {source.model} as another model shape than "
                        f"the run that started it ({decoder.package_path(batch).name} is "
                        f"not {package.name})"
                    )
                decoder.build_now(batch, lock=False)
                results[i] = "built"
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                record_failure(package, f"{type(e).__name__}: {e}")
                results[i] = "failed"
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llamita.engine.step_builder", description="Build a compiled decode step package (background)."
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dtype", required=True)
    parser.add_argument("--compact", type=int, choices=(0, 1), required=True)
    parser.add_argument("--block-size", type=int, default=0, help="0: the static cache's step")
    parser.add_argument("--batch", type=int, action="append", required=True)
    parser.add_argument("--package", type=Path, action="append", required=True)
    args = parser.parse_args(argv)
    if len(args.batch) != len(args.package):
        parser.error("give one --package per --batch")
    os.nice(19)  # the run that started it (and anything else) goes first
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    source = StepSource(args.model, args.dtype, bool(args.compact), args.block_size)
    results = build(source, list(zip(args.batch, args.package)))
    # Linux reports KiB: what the builder held besides the run that started it (docs/performance.md).
    log.info(
        "builder done: %s; peak RSS %d MiB",
        ", ".join(results),
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    )
    return 1 if "failed" in results else 0


if __name__ == "__main__":
    sys.exit(main())
