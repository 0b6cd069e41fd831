"""`llamita run`: one answer to one prompt, streamed to stdout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from llamita.cli.common import (
    CompileOption,
    DeviceOption,
    DtypeOption,
    GpuLayersOption,
    GrammarFileOption,
    JsonOption,
    JsonSchemaOption,
    LoraOption,
    ModelOption,
    NoEscapeOption,
    TensorParallelOption,
    ThreadsOption,
    fail,
    friendly_errors,
    grammar_option,
    open_llm,
    sampling_params,
    stderr,
)
from llamita.cli.escapes import process_escapes

if TYPE_CHECKING:
    from llamita.api.llm import LLM
    from llamita.sampling_params import SamplingParams


@friendly_errors
def run(
    args: list[str] = typer.Argument(
        ...,
        metavar="[MODEL] PROMPT",
        show_default=False,
        help="The prompt (a question, or text to continue with --raw), "
        "after an optional model name or path, as in `ollama run "
        "MODEL PROMPT`: a name not on this machine is pulled first.",
    ),
    model: Optional[Path] = ModelOption,
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt (chat mode only)."),
    max_tokens: Optional[int] = typer.Option(
        None,
        "--max-tokens",
        "-n",
        show_default=False,
        help="Most tokens to generate. [default: 256, or the model's num_predict]",
    ),
    temperature: Optional[float] = typer.Option(
        None,
        "--temperature",
        "-t",
        show_default=False,
        help="Sampling temperature; 0 = greedy, deterministic. [default: 0.8]",
    ),
    top_k: Optional[int] = typer.Option(
        None, "--top-k", show_default=False, help="Sample from the K most likely tokens (0 = off). [default: 40]"
    ),
    top_p: Optional[float] = typer.Option(
        None,
        "--top-p",
        show_default=False,
        help="Nucleus sampling: smallest set with this total probability (1 = off). [default: 0.95]",
    ),
    min_p: Optional[float] = typer.Option(
        None,
        "--min-p",
        show_default=False,
        help="Drop tokens below min_p x the top token's probability (0 = off). [default: 0.05]",
    ),
    repeat_penalty: Optional[float] = typer.Option(
        None,
        "--repeat-penalty",
        show_default=False,
        help="Divide logits of recent tokens by this (1 = off). [default: 1.0]",
    ),
    presence_penalty: Optional[float] = typer.Option(
        None,
        "--presence-penalty",
        show_default=False,
        help="Subtract from logits of tokens seen recently, -2..2. [default: 0]",
    ),
    frequency_penalty: Optional[float] = typer.Option(
        None,
        "--frequency-penalty",
        show_default=False,
        help="Subtract count x this from recent tokens' logits, -2..2. [default: 0]",
    ),
    repeat_last_n: Optional[int] = typer.Option(
        None,
        "--repeat-last-n",
        show_default=False,
        help="Window of recent tokens the penalties look at (-1 = all, 0 = off). [default: 64]",
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for reproducible sampling."),
    stop: Optional[list[str]] = typer.Option(
        None, "--stop", help="Stop when this text appears (repeatable); it is not printed."
    ),
    dtype: str = DtypeOption,
    raw: bool = typer.Option(False, "--raw", help="Complete PROMPT as plain text, without the chat template."),
    json_object: bool = JsonOption,
    json_schema: Optional[str] = JsonSchemaOption,
    grammar_file: Optional[Path] = GrammarFileOption,
    lora: Optional[list[str]] = LoraOption,
    device: str = DeviceOption,
    gpu_layers: Optional[int] = GpuLayersOption,
    tensor_parallel: int = TensorParallelOption,
    compile: Optional[bool] = CompileOption,
    threads: Optional[int] = ThreadsOption,
    no_escape: bool = NoEscapeOption,
) -> None:
    """Answer PROMPT once. Text goes to stdout as it is generated; progress and speed to stderr.
    A model made with `llamita create` brings its PARAMETERs (the flags given here win), SYSTEM
    and MESSAGEs.

    Examples: llamita run "What is the capital of France?" --temperature 0
              llamita run llama3.2:1b "¿Cuál es la capital de Francia?"
    """
    if len(args) > 2:
        fail(f"expected [MODEL] PROMPT, got {len(args)} arguments: quote the prompt")
    if len(args) == 2:
        if model is not None:
            fail("give the model once: as the first argument or with --model")
        model = Path(args[0])
    prompt = args[-1]
    if not no_escape:
        prompt = process_escapes(prompt)
        system = None if system is None else process_escapes(system)
        stop = [process_escapes(s) for s in stop or ()]
    flags = dict(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repeat_penalty,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        penalty_last_n=repeat_last_n,
        seed=seed,
        stop=tuple(stop) if stop else None,
        grammar=grammar_option(json_object, json_schema, grammar_file),
    )
    sampling_params(**flags)  # a bad flag fails here, before the model loads
    with open_llm(
        model,
        dtype=dtype,
        device=device,
        lora=lora,
        gpu_layers=gpu_layers,
        compile=compile,
        tensor_parallel=tensor_parallel,
        threads=threads,
    ) as llm:
        if llm is not None:  # None: a tensor-parallel rank other than 0, done following rank 0
            _answer(llm, prompt, system, raw, llm.sampling_params(**flags))


def _answer(llm: LLM, prompt: str, system: str | None, raw: bool, params: SamplingParams) -> None:
    """Stream the answer to stdout, then the speed to stderr."""
    from llamita.engine.loader import kernel_summary
    from llamita.engine.threads import threads_label

    # Which kernels and which decode path run, so that nobody has to guess why a run is slow.
    kernels = kernel_summary() if llm.loaded.device.type == "cpu" else str(llm.loaded.device)
    adapter = f" · LoRA {llm.adapter}" if llm.adapter else ""
    stderr.print(
        f"[dim]{llm.loaded.display_name}{adapter} · {llm.loaded.dtype} · {threads_label()} · "
        f"{kernels} · {llm.decode_path} decode · loaded in {llm.loaded.load_seconds:.1f} s[/]"
    )
    if raw:
        if system is not None:
            stderr.print("[yellow]warning:[/] --system is ignored with --raw")
        chunks = llm.generate_stream(prompt, params)
    else:
        messages = [{"role": "system", "content": system}] if system is not None else []
        chunks = llm.chat_stream(messages + [{"role": "user", "content": prompt}], params)
    finish = None
    for chunk in chunks:
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        finish = chunk.finish_reason or finish
    sys.stdout.write("\n")
    sys.stdout.flush()
    s = llm.last_stats
    stderr.print(
        f"[dim]prompt: {s.prompt_tokens} tokens, {s.prefill_tokens_per_second:.1f} tokens/s · "
        f"generation: {s.generated_tokens} tokens, {s.decode_tokens_per_second:.1f} tokens/s · "
        f"finish: {finish}[/]"
    )
