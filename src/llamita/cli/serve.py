"""`llamita serve`: an OpenAI- and Ollama-compatible HTTP server for the library's models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from llamita.cli.common import (
    CompileOption,
    DeviceOption,
    DtypeOption,
    GpuLayersOption,
    ModelOption,
    TensorParallelOption,
    ThreadsOption,
    friendly_errors,
)
from llamita.config import ServerConfig


@friendly_errors
def serve(
    model: Optional[Path] = ModelOption,
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on. The default accepts only this machine; "
        "0.0.0.0 opens the server to the network (set --api-key then).",
    ),
    port: int = typer.Option(8080, "--port", "-p", help="TCP port to listen on."),
    api_key: Optional[str] = typer.Option(
        None,
        "--api-key",
        envvar="LLAMITA_API_KEY",
        show_envvar=True,
        help="Require 'Authorization: Bearer KEY' (or 'X-Api-Key: KEY') on every route but /health. Default: no key.",
    ),
    max_queue: int = typer.Option(
        64,
        "--max-queue",
        min=0,
        help="Most requests waiting for a place in the batch (requests); more get HTTP 503 with Retry-After.",
    ),
    request_timeout: Optional[float] = typer.Option(
        None,
        "--request-timeout",
        min=0.001,
        show_default=False,
        help="Seconds a request may spend queued and generating in all; past that it is stopped "
        "and answered with HTTP 504 (a stream gets an error event, then [DONE]). Default: no limit.",
    ),
    kv_cache_tokens: Optional[int] = typer.Option(
        None,
        "--kv-cache-tokens",
        min=32,
        help="KV cache size, in token positions shared by all "
        "running requests. Default: 1 GiB of cache, at most "
        "context length x --max-running.",
        show_default=False,
    ),
    max_running: int = typer.Option(
        16, "--max-running", min=1, help="Most requests generating at once (sequences in the batch)."
    ),
    model_name: Optional[str] = typer.Option(
        None,
        "--model-name",
        help="Name clients pass as 'model'. Default: the library "
        "name given to --model (llama3.2:1b), else the file "
        "name without .gguf.",
        show_default=False,
    ),
    strict_model_names: bool = typer.Option(
        False,
        "--strict-model-names",
        help="Answer HTTP 404 (\"model 'x' not found, try pulling it first\") to a request whose "
        "'model' is neither the served name (or NAME+ADAPTER) nor a local model. Default: such "
        "a name answers with the served model, as llama.cpp's server does; a NAME+ADAPTER for "
        "an adapter not served is a 404 either way.",
    ),
    max_memory: Optional[str] = typer.Option(
        None,
        "--max-memory",
        show_default=False,
        help="Memory all loaded models may take together (estimated before loading: weights, KV "
        "cache, tokenizer), as 16GiB, 8GB or bytes. A model that would not fit unloads the "
        "least recently used idle ones; one that cannot fit at all is refused with HTTP 507. "
        "Default: 80 percent of the memory free once the default model is loaded, plus that model.",
    ),
    max_loaded_models: int = typer.Option(
        3,
        "--max-loaded-models",
        envvar="OLLAMA_MAX_LOADED_MODELS",
        show_envvar=True,
        min=0,
        help="Models loaded at once, the default model included, as Ollama's "
        "OLLAMA_MAX_LOADED_MODELS: loading one more first unloads the least recently used idle "
        "one (requests wait while all are answering). 1: only the default model is served; 0: "
        "the default, 3.",
    ),
    keep_alive: Optional[str] = typer.Option(
        None,
        "--keep-alive",
        envvar="OLLAMA_KEEP_ALIVE",
        show_envvar=True,
        show_default=False,
        help="How long a model loaded on demand stays after its last request, as Ollama's "
        "keep_alive: 5m, 1h, seconds, 0 (unload at once) or -1 (keep). A request's own "
        '"keep_alive" wins. Default: 5m.',
    ),
    data_dir: Optional[Path] = typer.Option(
        None,
        "--data-dir",
        help="Folder for the web chat's conversations and feedback "
        "(llamita.db, SQLite). Default: $XDG_DATA_HOME/llamita "
        "or ~/.local/share/llamita.",
        show_default=False,
    ),
    cors_origin: Optional[list[str]] = typer.Option(
        None,
        "--cors-origin",
        show_default=False,
        help="Let web pages from this origin (e.g. http://localhost:3000) call the API from a browser. "
        "Repeatable. Default: none, so no other site's page can read the answers.",
    ),
    dtype: str = DtypeOption,
    lora: Optional[list[str]] = typer.Option(
        None,
        "--lora",
        show_default=False,
        help="LoRA adapter a request may pick, as [NAME=]PATH[:SCALE]: a PEFT folder or a GGUF LoRA "
        "file; NAME defaults to the folder or file name, SCALE (default 1) multiplies its "
        'alpha/r. Repeatable. A request picks one with "model": "BASE+NAME" or "lora": '
        '"NAME"; requests with different adapters share the batch, the base is never changed.',
    ),
    device: str = DeviceOption,
    gpu_layers: Optional[int] = GpuLayersOption,
    tensor_parallel: int = TensorParallelOption,
    threads: Optional[int] = ThreadsOption,
    compile: Optional[bool] = CompileOption,
) -> None:
    """Serve MODEL (default: the embedded one) and every local model (`llamita list`), loaded
    on demand by the request's "model", over HTTP: OpenAI (/v1/chat/completions, /v1/completions, /v1/responses,
    /v1/models, each also without /v1) and
    Ollama (/api/chat, /api/generate, /api/tags ...) APIs, plus /health, /metrics, /tokenize,
    and a web chat page at /.

    Example: llamita serve --port 8080, then
    curl http://127.0.0.1:8080/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hola"}]}'
    """
    from llamita.serving.keep_alive import parse_bytes, parse_keep_alive
    from llamita.serving.server import serve as run_server

    if tensor_parallel > 1:
        _note_created(model)
    if keep_alive is not None:
        parse_keep_alive(keep_alive, "--keep-alive")  # refused before the model loads

    run_server(
        ServerConfig(
            model=os.fspath(model) if model else None,
            host=host,
            port=port,
            api_key=api_key or None,
            max_queue=max_queue,
            request_timeout=request_timeout,
            kv_cache_tokens=kv_cache_tokens,
            max_running=max_running,
            dtype=dtype,
            model_name=model_name,
            data_dir=os.fspath(data_dir) if data_dir else None,
            lora=tuple(lora or ()),
            device=device,
            gpu_layers=gpu_layers,
            tensor_parallel=tensor_parallel,
            cors_origins=tuple(cors_origin or ()),
            threads=threads,
            strict_model_names=strict_model_names,
            max_memory=parse_bytes(max_memory, "--max-memory") if max_memory else None,
            keep_alive=keep_alive,
            max_loaded_models=max_loaded_models or 3,
            compile=compile,
        )
    )


def _note_created(model: Path | None) -> None:
    """Say what a created model (`llamita create`) does not bring when served over tensor
    parallelism: its ADAPTERs (the one-process server runs every request with them)."""
    from llamita.library.local import resolve_model_settings

    if model is None or not os.fspath(model):
        return
    settings = resolve_model_settings(model)[1]
    if settings is None or not settings.adapters:
        return
    from llamita.cli.common import stderr

    stderr.print(
        f"[yellow]note:[/] {model} is a created model with ADAPTERs: a tensor-parallel server "
        "does not load them; pass them with --lora"
    )
