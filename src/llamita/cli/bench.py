"""`llamita bench`: prompt-processing and generation speed, reported like llama-bench."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.table import Table

from llamita.cli.common import (
    CompileOption,
    DeviceOption,
    DtypeOption,
    GpuLayersOption,
    ModelOption,
    TensorParallelOption,
    ThreadsOption,
    console,
    fail,
    friendly_errors,
    stderr,
)

if TYPE_CHECKING:
    from llamita.engine.loader import LoadedModel


@friendly_errors
def bench(
    model: Optional[Path] = ModelOption,
    n_prompt: int = typer.Option(512, "--n-prompt", "-p", help="Prompt tokens for the pp test (0 = skip)."),
    n_gen: int = typer.Option(128, "--n-gen", "-n", help="Generated tokens for the tg test (0 = skip)."),
    batch: int = typer.Option(
        0,
        "--batch",
        "-b",
        help="Also generate --n-gen tokens in this many sequences at once "
        "(continuous batching; aggregate tokens/s). 0 = skip.",
    ),
    threads: Optional[int] = ThreadsOption,
    repetitions: int = typer.Option(
        5, "--repetitions", "-r", help="Timed runs of each test, after one warm-up run; the median is reported."
    ),
    dtype: str = DtypeOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
    device: str = DeviceOption,
    gpu_layers: Optional[int] = GpuLayersOption,
    tensor_parallel: int = TensorParallelOption,
    compile: Optional[bool] = CompileOption,
    bandwidth: bool = typer.Option(
        False,
        "--bandwidth",
        help="Also measure memory bandwidth (copying a 1 GiB buffer, "
        "bytes read + written per second) and report tg as a "
        "fraction of the floor bandwidth / weight bytes read per "
        "token.",
    ),
) -> None:
    """Measure tokens per second: pp (prompt processing, tokens evaluated from an empty context)
    and tg (generation, one token at a time), as llama.cpp's llama-bench does, plus peak RSS.

    tg and tg x --batch measure the default decode path, the compiled step (tg x B: the
    server's paged engine and its compiled paged step): a model shape without one builds it
    first, in the foreground, before timing (1-2 minutes per package on 2 cores, once).
    --no-compile (or LLAMITA_COMPILE=0) measures eager decoding.

    Example: llamita bench -p 512 -n 128 --threads 2 -r 5 --json
    (tensor parallel: torchrun --nproc-per-node 2 -m llamita bench --tensor-parallel 2)
    """

    from llamita.engine.loader import load_model
    from llamita.engine.step_builder import compile_mode
    from llamita.engine.tensor_parallel import open_model
    from llamita.engine.threads import use_threads

    if repetitions < 1 or n_prompt < 0 or n_gen < 0 or batch < 0:
        fail("--repetitions must be >= 1, and -p, -n, -b >= 0")
    use_threads(threads)
    if tensor_parallel > 1:
        if gpu_layers is not None:
            fail("--tensor-parallel does not combine with --gpu-layers")
        if compile:
            stderr.print("[yellow]note:[/] --compile ignored: tensor parallelism decodes eagerly")
        with open_model(model, tensor_parallel=tensor_parallel, dtype=dtype, device=device) as loaded:
            if loaded is not None:  # rank 0; the other ranks have followed its steps and are done
                _measure(loaded, n_prompt, n_gen, batch, repetitions, as_json, tensor_parallel)
        return
    with stderr.status("loading model…"):
        loaded = load_model(model, dtype=dtype, device=device, gpu_layers=gpu_layers)
    # bench exists to measure: the default path (background build) is built here, untimed.
    _measure(
        loaded,
        n_prompt,
        n_gen,
        batch,
        repetitions,
        as_json,
        compile=compile_mode(compile) != "off",
        bandwidth=bandwidth,
    )


def _measure(
    loaded: LoadedModel,
    n_prompt: int,
    n_gen: int,
    batch: int,
    repetitions: int,
    as_json: bool,
    tensor_parallel: int = 1,
    compile: bool = False,
    bandwidth: bool = False,
) -> None:
    """Run the tests and print the report (rank 0 only under tensor parallelism)."""
    import torch

    from llamita.engine.loader import kernel_summary
    from llamita.engine.threads import threads_label
    from llamita.jobs.bench import (
        bandwidth_floor,
        bench_batched_generation,
        bench_generation,
        bench_prompt,
        decode_path,
        peak_rss_bytes,
    )

    kernels = kernel_summary() if loaded.device.type == "cpu" else "cuda"
    decode = decode_path(loaded, compile)
    stderr.print(
        f"[dim]{loaded.display_name} · {loaded.dtype} · {loaded.device} · "
        f"{threads_label()} · {kernels} · {decode} decode · loaded in {loaded.load_seconds:.1f} s[/]"
    )
    results = []
    with stderr.status("measuring…") as status:
        if n_prompt:
            status.update(f"pp{n_prompt}…")
            results.append(bench_prompt(loaded, n_prompt, repetitions))
        if n_gen:
            status.update(f"tg{n_gen}…")
            results.append(bench_generation(loaded, n_gen, repetitions, compile=compile))
        if n_gen and batch:
            status.update(f"tg{n_gen}x{batch}…")
            results.append(bench_batched_generation(loaded, n_gen, batch, repetitions, compile=compile))
    floor = None
    tg = next((r for r in results if r.test == f"tg{n_gen}"), None)
    if bandwidth and tg is not None:
        with stderr.status("memory bandwidth…"):
            floor = bandwidth_floor(loaded, tg.tokens_per_second)
    report: dict[str, Any] = {
        "model": str(loaded.path),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "device": str(loaded.device),
        "threads": torch.get_num_threads(),
        "tensor_parallel": tensor_parallel,
        "compile": decode == "compiled step",
        "decode": decode,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "kernels": kernels,
        "load_seconds": round(loaded.load_seconds, 3),
        "peak_rss_bytes": peak_rss_bytes(),
        "results": [r.to_dict() for r in results],
    }
    if floor is not None:
        report["bandwidth_floor"] = floor.to_dict()
    if as_json:
        print(json.dumps(report))
        return
    table = Table("test", "tokens/s", "± stddev", "runs")
    for r in results:
        table.add_row(r.test, f"{r.tokens_per_second:.2f}", f"{r.stddev:.2f}", str(len(r.samples)))
    console().print(table)
    stderr.print(f"[dim]peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MiB[/]")
    if floor is not None:
        stderr.print(
            f"bandwidth floor: {floor.weight_bytes_per_token / 2**20:.0f} MiB of weights a "
            f"token at {floor.copy_bandwidth / 1e9:.1f} GB/s = {floor.floor_tokens_per_second:.2f} "
            f"tokens/s; tg{n_gen} is {100 * floor.fraction_of_floor:.0f}% of it"
        )
    if compile:
        warmups = ", ".join(f"{r.test} {r.warmup_seconds:.1f} s" for r in results)
        stderr.print(f"[dim]warm-up runs (compiling included): {warmups}[/]")
