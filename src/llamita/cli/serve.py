"""`llamita serve`: an OpenAI- and Ollama-compatible HTTP server for one model."""

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
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on. The default accepts only this machine; "
                                  "0.0.0.0 opens the server to the network (set --api-key then)."),
    port: int = typer.Option(8080, "--port", "-p", help="TCP port to listen on."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LLAMITA_API_KEY", show_envvar=True,
                                          help="Require 'Authorization: Bearer KEY' (or 'X-Api-Key: KEY') "
                                               "on every route but /health. Default: no key."),
    max_queue: int = typer.Option(64, "--max-queue", min=0,
                                  help="Most requests waiting for a place in the batch (requests); "
                                       "more get HTTP 503 with Retry-After."),
    request_timeout: Optional[float] = typer.Option(
        None, "--request-timeout", min=0.001, show_default=False,
        help="Seconds a request may spend queued and generating in all; past that it is stopped "
             "and answered with HTTP 504 (a stream gets an error event, then [DONE]). Default: no limit."),
    kv_cache_tokens: Optional[int] = typer.Option(None, "--kv-cache-tokens", min=32,
                                                  help="KV cache size, in token positions shared by all "
                                                       "running requests. Default: 1 GiB of cache, at most "
                                                       "context length x --max-running.", show_default=False),
    max_running: int = typer.Option(16, "--max-running", min=1,
                                    help="Most requests generating at once (sequences in the batch)."),
    model_name: Optional[str] = typer.Option(None, "--model-name",
                                             help="Name clients pass as 'model'. Default: the library "
                                                  "name given to --model (llama3.2:1b), else the file "
                                                  "name without .gguf.", show_default=False),
    strict_model_names: bool = typer.Option(
        False, "--strict-model-names",
        help="Answer HTTP 404 to a request whose 'model' is not the served name (or NAME+ADAPTER). "
             "Default: any name answers with the served model, as llama.cpp's server does; a "
             "NAME+ADAPTER for an adapter not served is a 404 either way."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir",
                                            help="Folder for the web chat's conversations and feedback "
                                                 "(llamita.db, SQLite). Default: $XDG_DATA_HOME/llamita "
                                                 "or ~/.local/share/llamita.", show_default=False),
    cors_origin: Optional[list[str]] = typer.Option(
        None, "--cors-origin", show_default=False,
        help="Let web pages from this origin (e.g. http://localhost:3000) call the API from a browser. "
             "Repeatable. Default: none, so no other site's page can read the answers."),
    dtype: str = DtypeOption,
    lora: Optional[list[str]] = typer.Option(
        None, "--lora", show_default=False,
        help="LoRA adapter a request may pick, as [NAME=]PATH[:SCALE]: a PEFT folder or a GGUF LoRA "
             "file; NAME defaults to the folder or file name, SCALE (default 1) multiplies its "
             "alpha/r. Repeatable. A request picks one with \"model\": \"BASE+NAME\" or \"lora\": "
             "\"NAME\"; requests with different adapters share the batch, the base is never changed."),
    device: str = DeviceOption,
    gpu_layers: Optional[int] = GpuLayersOption,
    tensor_parallel: int = TensorParallelOption,
    threads: Optional[int] = ThreadsOption,
    compile: Optional[bool] = CompileOption,
) -> None:
    """Serve MODEL over HTTP: OpenAI (/v1/chat/completions, /v1/completions, /v1/responses,
    /v1/models, each also without /v1) and
    Ollama (/api/chat, /api/generate, /api/tags ...) APIs, plus /health, /metrics, /tokenize,
    and a web chat page at /.

    Example: llamita serve --port 8080, then
    curl http://127.0.0.1:8080/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hola"}]}'
    """
    from llamita.serving.server import serve as run_server

    run_server(ServerConfig(model=os.fspath(model) if model else None, host=host, port=port,
                            api_key=api_key or None, max_queue=max_queue,
                            request_timeout=request_timeout, kv_cache_tokens=kv_cache_tokens,
                            max_running=max_running, dtype=dtype, model_name=model_name,
                            data_dir=os.fspath(data_dir) if data_dir else None, lora=tuple(lora or ()),
                            device=device, gpu_layers=gpu_layers, tensor_parallel=tensor_parallel,
                            cors_origins=tuple(cors_origin or ()), threads=threads,
                            strict_model_names=strict_model_names, compile=compile))
