"""`llamita chat`: an interactive conversation that keeps its history."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from llamita.cli.common import (
    CompileOption,
    DeviceOption,
    DtypeOption,
    GpuLayersOption,
    LoraOption,
    ModelOption,
    NoEscapeOption,
    TensorParallelOption,
    ThreadsOption,
    console,
    fail,
    friendly_errors,
    open_llm,
    start_up,
    stderr,
)
from llamita.cli.escapes import process_escapes
from llamita.errors import LlamitaError

if TYPE_CHECKING:
    from llamita.api.llm import LLM
    from llamita.sampling_params import SamplingParams

HELP = """commands:
  /reset            forget the conversation (the system prompt stays)
  /system TEXT      set the system prompt (and reset); '/system' alone shows it
  /params           show sampling parameters; '/params temperature=0.2 top_k=20' changes them
  /exit or /bye     leave (also Ctrl-D)"""


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


CHAT_DEFAULTS = {"max_tokens": 512}  # under a created model's PARAMETERs and the flags


@friendly_errors
def chat(
    model_name: Optional[str] = typer.Argument(
        None,
        metavar="[MODEL]",
        show_default=False,
        help="A model name or path, as --model (`llamita chat "
        "llama3.2:1b`); a name not on this machine is "
        "pulled first.",
    ),
    model: Optional[Path] = ModelOption,
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt for the conversation."),
    max_tokens: Optional[int] = typer.Option(
        None,
        "--max-tokens",
        "-n",
        show_default=False,
        help="Most tokens per answer. [default: 512, or the model's num_predict]",
    ),
    temperature: Optional[float] = typer.Option(
        None,
        "--temperature",
        "-t",
        show_default=False,
        help="Sampling temperature; 0 = greedy. [default: 0.8, or the model's]",
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for reproducible sampling."),
    dtype: str = DtypeOption,
    lora: Optional[list[str]] = LoraOption,
    device: str = DeviceOption,
    gpu_layers: Optional[int] = GpuLayersOption,
    tensor_parallel: int = TensorParallelOption,
    compile: Optional[bool] = CompileOption,
    threads: Optional[int] = ThreadsOption,
    no_escape: bool = NoEscapeOption,
) -> None:
    """Talk with the model. Type /help for commands. Old turns are dropped when the history no
    longer fits in the context window (the system prompt is kept). A model made with `llamita
    create` brings its PARAMETERs (the flags given here win), SYSTEM and MESSAGEs."""
    if model_name is not None:
        if model is not None:
            fail("give the model once: as the argument or with --model")
        model = Path(model_name)
    with start_up():
        from llamita.sampling_params import SamplingParams

    flags: dict[str, Any] = dict(max_tokens=max_tokens, temperature=temperature, seed=seed)
    SamplingParams(**{k: v for k, v in flags.items() if v is not None})  # bad flags fail before loading
    if system is not None and not no_escape:
        system = process_escapes(system)
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
            _converse(llm, system, llm.sampling_params(CHAT_DEFAULTS, **flags))


def _converse(llm: LLM, system: str | None, params: SamplingParams) -> None:
    """The read-answer loop on stdin, until /exit or the end of input."""
    from llamita.engine.conversation import fit_messages

    out = console()
    adapter = f" · LoRA {llm.adapter}" if llm.adapter else ""
    stderr.print(
        f"[dim]{llm.loaded.display_name}{adapter} · context {llm.context_length} tokens · "
        f"{llm.decode_path} decode · /help for commands, Ctrl-D to leave[/]"
    )
    history: list[dict[str, str]] = []
    ctrl_c_at_prompt = False  # a second Ctrl-C in a row at the prompt leaves

    while True:
        try:
            line = input(">>> ") if sys.stdin.isatty() else sys.stdin.readline()
        except EOFError:
            line = ""
        except KeyboardInterrupt:
            if ctrl_c_at_prompt:
                break
            ctrl_c_at_prompt = True
            stderr.print("\n[dim](Ctrl-C again, /exit or Ctrl-D to leave)[/]")
            continue
        ctrl_c_at_prompt = False
        if line == "" and not sys.stdin.isatty():
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/bye", "/quit"):
            break
        if line == "/help":
            out.print(HELP)
            continue
        if line == "/reset":
            history = []
            out.print("[dim]conversation reset[/]")
            continue
        if line.startswith("/system"):
            text = line[len("/system") :].strip()
            if text:
                system, history = text, []
                out.print("[dim]system prompt set; conversation reset[/]")
            else:
                out.print(f"system: {system if system is not None else '(model default)'}")
            continue
        if line.startswith("/params"):
            changes = {}
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                changes[key] = _parse_value(value)
            try:
                params = dataclasses.replace(params, **changes)
            except (TypeError, LlamitaError) as e:
                out.print(f"[red]{e}[/]")
            out.print(", ".join(f"{f.name}={getattr(params, f.name)!r}" for f in dataclasses.fields(params)))
            continue
        if line.startswith("/"):
            out.print(f"[red]unknown command {line.split()[0]}[/]; /help lists them")
            continue

        messages = ([{"role": "system", "content": system}] if system else []) + history
        messages.append({"role": "user", "content": line})
        # Keep room for the answer: max_tokens, or a quarter of the window without a limit.
        reserve = params.max_tokens or llm.context_length // 4
        budget = llm.context_length - min(reserve, llm.context_length // 2)
        try:
            messages, dropped = fit_messages(messages, lambda m: len(llm.encode_chat(m)), budget)
        except LlamitaError as e:
            out.print(f"[red]{e}[/]")
            continue
        if dropped:
            stderr.print(
                f"[yellow]the conversation outgrew the context window: dropped the {dropped} oldest message(s)[/]"
            )
        answer, stopped = _stream_answer(llm, messages, params)
        # What was shown stays in the conversation, a stopped answer too (as it reads on screen).
        history = [m for m in messages if m["role"] != "system"] + [{"role": "assistant", "content": answer}]
        if stopped:
            stderr.print("[dim]answer stopped (Ctrl-C); the conversation goes on[/]")
            continue
        s = llm.last_stats
        stderr.print(f"[dim]{s.generated_tokens} tokens, {s.decode_tokens_per_second:.1f} tokens/s[/]")


def _stream_answer(llm: LLM, messages: list[dict[str, str]], params: SamplingParams) -> tuple[str, bool]:
    """Stream one answer to stdout: (its text, whether Ctrl-C stopped it). Ctrl-C ends only the
    answer: the stream is closed, which frees its place in the engine, and the chat goes on."""
    answer = ""
    stream = llm.chat_stream(messages, params)
    try:
        for chunk in stream:
            answer += chunk.text
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.close()
        sys.stdout.write("\n")
        return answer, True
    sys.stdout.write("\n")
    return answer, False
