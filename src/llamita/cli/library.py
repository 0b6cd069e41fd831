"""`llamita pull | list | show | rm | cp`: models by name, Ollama's way."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Column, Table

from llamita.cli.common import friendly_errors, stderr

NAME_HELP = (
    "A model name: a short name (llama3.2:1b, llama3.2:3b, llama3.1:8b, llama3.1:70b, "
    "llama3.1:405b, smollm2:135m), a Hugging Face repository hf.co/USER/REPO[:QUANT] or "
    "USER/REPO[:QUANT], an Ollama tag, or a name given with `llamita cp`."
)


@friendly_errors
def pull(name: str = typer.Argument(..., help=NAME_HELP, show_default=False)) -> None:
    """Download a model into the Hugging Face cache and name it in the library.

    A GGUF repository's :QUANT tag picks its file (case-insensitive; default Q4_K_M, else the
    only file); a split GGUF is fetched whole; a safetensors repository brings config.json,
    its shards and tokenizer files. Resumes an interrupted download; checks free disk space
    first and each file's SHA-256 after. HF_TOKEN for gated repositories, HF_HOME for where
    files go, HF_ENDPOINT for a mirror.

    Example: llamita pull llama3.2:1b
    """
    found = pull_with_progress(name)
    stderr.print(f"[green]success:[/] {found.name} · {_size(found.size_bytes)} · {found.path}")


def pull_with_progress(name: str) -> Any:
    """Pull `name` drawing rich progress bars on stderr; returns the local model."""
    from llamita.cli.progress import RichDownloadBar
    from llamita.library.pull import pull as pull_model

    return pull_model(name, tqdm_class=RichDownloadBar, status=lambda s: stderr.print(f"[dim]{s}[/]"))


def ensure_local(model: Any) -> None:
    """Before `run` or `chat`: pull a model given by a remote-looking name (a repository or a
    short name) that is not on this machine yet, as `ollama run` does. Paths are left alone:
    a missing file stays a "file not found" from the loader."""
    if model is None:
        return
    from llamita.library.names import parse_name
    from llamita.library.pull import needs_pull

    if needs_pull(model):
        name = parse_name(model).text
        stderr.print(f"[dim]{name} is not on this machine: pulling it[/]")
        pull_with_progress(name)


@friendly_errors
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON (one object per model).")) -> None:
    """The models on this machine: pulled, copied or created names, the Hugging Face cache,
    Ollama's store (OLLAMA_MODELS or ~/.ollama/models) and the embedded default. FROM says
    "created" for a model `llamita create` made."""
    from llamita.library.describe import describe
    from llamita.library.local import local_models

    rows: list[dict[str, Any]] = []  # the JSON objects, then the table's rows
    for m in local_models():
        params = m.manifest.parameters if m.manifest and m.manifest.parameters else None
        quant = m.quantization
        if params is None or quant is None:
            d = describe(m.path)
            params, quant = params or d.parameters, quant or d.quantization
        created_from = m.manifest.created_from if m.manifest is not None and m.manifest.settings is not None else None
        rows.append(
            {
                "name": m.name,
                "source": m.source,
                "size_bytes": m.size_bytes,
                "quantization": quant,
                "parameters": params,
                "modified": m.modified,
                "path": str(m.path),
                "created_from": created_from,
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    # The figures never wrap; a long name folds rather than losing characters.
    table = Table(
        Column("NAME", overflow="fold"),
        *(Column(h, no_wrap=True) for h in ("SIZE", "QUANT", "PARAMS", "MODIFIED", "FROM")),
    )
    for r in rows:
        table.add_row(
            r["name"],
            _size(r["size_bytes"]),
            r["quantization"] or "-",
            _params(r["parameters"]),
            _ago(r["modified"]),
            "created" if r["created_from"] else r["source"],
        )
    Console().print(table)


@friendly_errors
def show(
    name: str = typer.Argument(..., help=NAME_HELP, show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    license_only: bool = typer.Option(False, "--license", help="Print only the license text."),
    template_only: bool = typer.Option(False, "--template", help="Print only the chat template."),
    modelfile: bool = typer.Option(
        False, "--modelfile", help="Print a Modelfile that re-creates the model (`llamita create`)."
    ),
) -> None:
    """A local model's metadata, chat template, parameters and license (when it has one); for a
    created model, its system prompt, messages and adapters too."""
    from llamita.errors import ModelFileError
    from llamita.library.describe import describe
    from llamita.library.local import find_local
    from llamita.library.names import parse_name

    found = find_local(name)
    path = found.path if found is not None else None
    if found is None and parse_name(name).kind == "path":
        path = Path(name).expanduser()
    if path is None or not path.exists():
        raise ModelFileError(f"model '{name}' is not on this machine (`llamita list` shows what is)")
    settings = found.settings if found is not None else None
    if modelfile:
        print(_modelfile_of(found, path, settings), end="")
        return
    d = describe(path)
    ollama = found.ollama if found is not None else None
    parameters = dict(d.generation)
    if ollama is not None:
        parameters.update(ollama.parameters)
    template = (ollama.template if ollama and ollama.template else None) or d.template
    license_text = (ollama.license if ollama and ollama.license else None) or d.license
    system = ollama.system if ollama else None
    if settings is not None:
        parameters.update({k: list(v) if isinstance(v, tuple) else v for k, v in settings.parameters.items()})
        template = settings.template or template
        license_text = "\n\n".join(settings.license) or license_text
        system = settings.system if settings.system is not None else system
    data: dict[str, Any] = {
        "name": found.name if found else str(path),
        "path": str(path),
        "source": found.source if found else "path",
        "architecture": d.architecture,
        "parameters": d.parameters,
        "quantization": d.quantization,
        "size_bytes": found.size_bytes if found else None,
        "metadata": d.metadata,
        "template": template,
        "system": system,
        "generation_parameters": parameters,
        "license": license_text,
        "created_from": found.manifest.created_from if settings is not None and found and found.manifest else None,
        "messages": list(settings.messages) if settings is not None else [],
        "adapters": list(settings.adapters) if settings is not None else [],
    }
    if license_only or template_only:
        print((license_text if license_only else template) or "")
        return
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
        return
    console = Console()
    table = Table(title=data["name"], show_header=False)
    table.add_column(style="bold cyan")
    table.add_column()
    for key in ("path", "source", "architecture", "quantization"):
        table.add_row(key, str(data[key] or "-"))
    if data["created_from"]:
        table.add_row("created from", data["created_from"])
    table.add_row("parameters", _params(d.parameters))
    for key, value in d.metadata.items():
        if key.startswith(("general.", "llama.")) or key in ("model_type", "torch_dtype"):
            table.add_row(key, str(value)[:200])
    console.print(table)
    messages = "\n".join(f"{m['role']}: {m['content']}" for m in data["messages"])
    for title, text in (
        ("parameters", "\n".join(f"{k} {v}" for k, v in parameters.items())),
        ("system", data["system"]),
        ("messages", messages),
        ("adapters", "\n".join(data["adapters"])),
        ("template", template),
        ("license", license_text),
    ):
        if text:
            console.print(f"[bold cyan]{title}[/]")
            console.print(text if title != "license" else _first_lines(text), markup=False, highlight=False)


def _modelfile_of(found: Any, path: Any, settings: Any) -> str:
    """A Modelfile that makes this model again: FROM its weights' path (as `ollama show
    --modelfile`), the name it was made from in a comment."""
    from llamita.library.modelfile import format_modelfile
    from llamita.library.settings import ModelSettings

    name = found.name if found is not None else str(path)
    comment = (
        f'Modelfile generated by "llamita show"\nTo build a new Modelfile based on this one, '
        f"replace the FROM line with:\nFROM {name}"
    )
    if settings is not None and found.manifest.created_from:
        comment += f"\n(made FROM {found.manifest.created_from})"
    return format_modelfile(str(path), settings or ModelSettings(), comment)


@friendly_errors
def create(
    name: str = typer.Argument(..., help="The new model's name, e.g. mario or mario:v1.", show_default=False),
    file: Path = typer.Option(Path("Modelfile"), "--file", "-f", help="The Modelfile (Ollama's format) to read."),
) -> None:
    """Make a model from a Modelfile, as `ollama create`: FROM a library name, a path or
    USER/REPO[:QUANT] (pulled first), with PARAMETERs (Ollama's names), SYSTEM, TEMPLATE (Jinja),
    MESSAGEs, ADAPTER (a LoRA: GGUF file or PEFT folder) and LICENSE. The model is stored by
    reference: no weights are copied. Making a name again replaces it.

    Example: printf 'FROM llama3.2:1b\\nPARAMETER temperature 0.3\\nSYSTEM You are Mario.\\n' > Modelfile
             llamita create mario && llamita run mario "Who are you?"
    """
    from llamita.library.create import create_model, from_path
    from llamita.library.modelfile import parse_modelfile, read_modelfile

    modelfile = parse_modelfile(read_modelfile(file))
    folder = file.expanduser().resolve().parent
    if from_path(modelfile, folder) is None:
        ensure_local(modelfile.from_)  # a repository or short name not here yet is pulled
    m = create_model(name, modelfile, folder)
    stderr.print(f"[green]success:[/] created '{m.name}' from {modelfile.from_} (a reference to {m.path})")


@friendly_errors
def rm(names: list[str] = typer.Argument(..., help="Names to remove (`llamita list`).", show_default=False)) -> None:
    """Forget models. A pulled model's files leave the Hugging Face cache unless another name
    (a copy) still uses them; models of Ollama's store are left to `ollama rm`."""
    from llamita.library.manage import remove_model

    for name in names:
        freed = remove_model(name)
        stderr.print(f"deleted '{name}'" + (f" ({_size(freed)} freed)" if freed else ""))


@friendly_errors
def cp(
    source: str = typer.Argument(..., help="A local model's name, or a model file or folder.", show_default=False),
    destination: str = typer.Argument(..., help="The new name, e.g. my-llama or my-llama:v1.", show_default=False),
) -> None:
    """Give a model another name. The new name refers to the same files: nothing is copied."""
    from llamita.library.manage import copy_model

    m = copy_model(source, destination)
    stderr.print(f"copied '{source}' to '{m.name}' (a reference to {m.path})")


def _size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.1f} GB" if n >= 10**9 else f"{n / 1e6:.0f} MB"


def _params(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.1f}B" if n >= 10**9 else f"{n / 1e6:.0f}M"


def _ago(t: float) -> str:
    s = max(time.time() - t, 0)
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= size:
            return f"{int(s // size)} {unit} ago"
    return "just now"


def _first_lines(text: str, n: int = 20) -> str:
    lines = text.splitlines()
    return "\n".join(lines[:n]) + (
        f"\n… ({len(lines) - n} more lines: `llamita show NAME --license`)" if len(lines) > n else ""
    )
