"""Pieces every command shares: turning errors into one-line messages, sampling options."""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console

from llamita.errors import LlamitaError

P = ParamSpec("P")
R = TypeVar("R")


def console(*, to_stderr: bool = False) -> Console:
    """A rich Console for stdout or stderr. Piped or redirected (no terminal), rich would wrap
    and cut everything at 80 columns ("finish: ⏎stop", truncated paths in tables): there lines
    stay whole, as a log or a script reading them needs."""
    stream = sys.stderr if to_stderr else sys.stdout
    piped = not stream.isatty()
    return Console(stderr=to_stderr, highlight=False, soft_wrap=piped, width=100_000 if piped else None)


stderr = console(to_stderr=True)

MODEL_HELP = (
    "A model: a path (.gguf file, Hugging Face or Meta folder) or a library name "
    "(llama3.2:1b, hf.co/USER/REPO:QUANT, an Ollama tag, a `llamita cp` name; "
    "`llamita list` shows them). Default: the embedded SmolLM2-135M-Instruct (Q4_1)."
)
DTYPE_HELP = (
    "Compute dtype of weights and activations: auto (bfloat16 on CPUs with AVX-512 BF16/AMX "
    "and on CUDA, else float32), float32 or bfloat16."
)
ModelOption = typer.Option(None, "--model", "-m", help=MODEL_HELP, show_default=False)
LORA_HELP = (
    "LoRA adapter applied without merging: a PEFT folder (adapter_config.json + "
    "adapter_model.safetensors) or a llama.cpp GGUF LoRA file, as PATH[:SCALE]; SCALE "
    "multiplies the adapter's own alpha/r (default 1, 0 = off). Repeatable: the updates add up."
)
LoraOption = typer.Option(None, "--lora", help=LORA_HELP, show_default=False)
DtypeOption = typer.Option("auto", "--dtype", help=DTYPE_HELP)
DeviceOption = typer.Option(
    "auto",
    "--device",
    help="Where the model runs: cpu, cuda (cuda:N for one GPU of several) or "
    "auto (CUDA when a GPU is available, else the CPU).",
)
GpuLayersOption = typer.Option(
    None,
    "--gpu-layers",
    min=0,
    show_default=False,
    help="With --device cuda: keep only the first N blocks (and their KV "
    "cache) on the GPU and run the rest on the CPU, for models larger "
    "than the GPU's memory. Default: every block on the GPU.",
)
CompileOption = typer.Option(
    None,
    "--compile/--no-compile",
    show_default=False,
    help="How tokens are generated. Default: through an ahead-of-time "
    "compiled decode step (AOTInductor; about 1.5-2x faster generation "
    "on the CPU) once it is built; the first run of a model shape answers "
    "eagerly while a background process (lowest priority, one thread) "
    "builds it (1-2 minutes on 2 cores) into ~/.cache/llamita/aoti. "
    "--compile: build it now, before answering. --no-compile: eager. "
    "LLAMITA_COMPILE=0 / =1 set the same. Eager with --lora, "
    "--gpu-layers, --tensor-parallel or on CUDA.",
)
NoEscapeOption = typer.Option(
    False,
    "--no-escape",
    help="Take the prompt, --system and --stop literally. Default: \\n, \\t, "
    "\\r, \\\\, \\\", \\' and \\xHH in them become the characters "
    "they stand for, as in llama.cpp, since shells pass them through.",
)
THREADS_HELP = (
    "CPU threads for the model's matmuls. Default: one per core, less the cores other work "
    "keeps busy when the command starts (the 1-minute load average), at least 1: on a busy "
    "machine more threads than free cores make generation several times slower."
)
ThreadsOption = typer.Option(None, "--threads", min=1, help=THREADS_HELP, show_default=False)
TensorParallelOption = typer.Option(
    1,
    "--tensor-parallel",
    min=1,
    help="Split the model over K processes, one shard each: launch "
    "with `torchrun --nproc-per-node K -m llamita ... "
    "--tensor-parallel K` (gloo on CPU, NCCL on GPUs).",
)


@contextlib.contextmanager
def start_up() -> Iterator[None]:
    """Import torch and load the model with the cyclic garbage collector paused, then freeze
    what was made (it lives as long as the command) out of later collections.

    Start-up makes about a million long-lived objects (torch's modules and operators, the
    vocabulary and merges), and the collector, triggered by the allocations alone, scans them
    again and again as they are made. `llamita run` to its first token, 2 cores, alternating
    runs (benchmarks/startup.py's measure), medians of 7: 1.62 s with the collector on, 1.39 s
    paused (in one process: importing torch 0.85 -> 0.72 s, llamita's modules 0.12 -> 0.04 s)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def open_llm(
    model: Path | None,
    *,
    dtype: str,
    device: str,
    lora: list[str] | None,
    gpu_layers: int | None,
    compile: bool | None,
    tensor_parallel: int = 1,
    threads: int | None = None,
) -> Iterator[Any]:
    """The LLM that `run` and `chat` answer with, every --lora adapter applied to every row,
    running on `threads` CPU threads (None: engine/threads.py's default).

    With --tensor-parallel K (under torchrun) every rank loads its shard; rank 0 gets the LLM
    and the others follow its forward passes inside the block and get None: they have nothing
    left to do."""
    with start_up():
        from llamita.api.llm import LLM
        from llamita.engine.threads import use_threads

    from llamita.cli.library import ensure_local

    use_threads(threads)
    ensure_local(model)  # `llamita run llama3.2:1b` pulls it first, as `ollama run` does
    if tensor_parallel == 1:
        with stderr.status("loading model…"), start_up():
            llm = LLM(model, dtype=dtype, device=device, lora=lora, gpu_layers=gpu_layers, compile=compile)
        if compile and llm.compile_skipped:
            stderr.print(f"[yellow]note:[/] --compile ignored: {llm.compile_skipped}")
        yield llm
        return
    if gpu_layers is not None:
        fail("--tensor-parallel does not combine with --gpu-layers")
    if compile:
        stderr.print("[yellow]note:[/] --compile ignored: tensor parallelism decodes eagerly")
    from llamita.engine.tensor_parallel import open_model

    with open_model(
        model, tensor_parallel=tensor_parallel, dtype=dtype, device=device, lora=lora or (), combine_lora=True
    ) as loaded:
        if loaded is None:
            yield None
            return
        names = loaded.model.lora.names
        yield LLM.from_loaded(loaded, names[0] if names else None)


def fail(message: str, code: int = 1) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def friendly_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Show our typed errors as one line and a non-zero exit, never a deep traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except LlamitaError as e:
            fail(str(e))
        except KeyboardInterrupt:
            stderr.print("\ninterrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper


def sampling_params(**kw: Any) -> Any:
    """SamplingParams from CLI options, dropping the ones left unset (None)."""
    from llamita.sampling_params import SamplingParams

    return SamplingParams(**{k: v for k, v in kw.items() if v is not None})


JSON_HELP = "Answer with one JSON object (every token constrained to valid JSON)."
JSON_SCHEMA_HELP = "Answer with JSON valid under this JSON Schema: a file path or the schema itself as JSON text."
GRAMMAR_HELP = "Answer within the grammar in this file: GBNF (llama.cpp's .gbnf) or Lark (.lark)."
JsonOption = typer.Option(False, "--json", help=JSON_HELP)
JsonSchemaOption = typer.Option(None, "--json-schema", help=JSON_SCHEMA_HELP, show_default=False)
GrammarFileOption = typer.Option(None, "--grammar-file", help=GRAMMAR_HELP, show_default=False)


def grammar_option(json_object: bool, json_schema: str | None, grammar_file: Path | None) -> Any:
    """The Grammar the structured-output options ask for (at most one of them), or None."""
    from llamita.sampling_params import Grammar

    if sum((json_object, json_schema is not None, grammar_file is not None)) > 1:
        fail("give only one of --json, --json-schema and --grammar-file")
    if json_object:
        return Grammar.json_object()
    if json_schema is not None:
        path = Path(json_schema)
        text = (
            path.read_text(encoding="utf-8")
            if not json_schema.lstrip().startswith("{") and path.is_file()
            else json_schema
        )
        return Grammar.json_schema(text)
    if grammar_file is not None:
        return Grammar("lark" if grammar_file.suffix == ".lark" else "gbnf", grammar_file.read_text(encoding="utf-8"))
    return None
