"""Run `llamita serve`: load the model, start the engine thread, serve HTTP until interrupted."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from llamita.config import ServerConfig
from llamita.engine.llm_engine import LLMEngine
from llamita.engine.loader import LoadedModel, kernel_summary, load_model
from llamita.engine.lora_attach import attach_loras
from llamita.engine.tensor_parallel import open_model
from llamita.engine.threads import on_fresh_thread, threads_label, use_threads
from llamita.errors import InvalidParameterError
from llamita.jobs.memory import served_bytes
from llamita.serving.app import create_app
from llamita.serving.engine_loop import EngineLoop
from llamita.serving.keep_alive import default_keep_alive, format_bytes, parse_keep_alive
from llamita.serving.model_memory import default_max_memory
from llamita.serving.model_pool import ModelPool, PoolConfig

log = logging.getLogger(__name__)


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a server anyone on the network can use: a non-loopback address and no key."""
    if api_key:
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        if host == "localhost":
            return None
    return (
        f"llamita: WARNING: listening on {host} without an API key: anyone who can reach this "
        "address can use the model and read the web chat's conversations. Set --api-key (or "
        "LLAMITA_API_KEY), or listen on 127.0.0.1."
    )


def served_name(path: Path, model: str | None = None) -> str:
    """The name clients give as `model`: the library name the server was started with
    (`-m llama3.2:1b`, as Ollama names it), else the file name without .gguf (a folder: its
    name)."""
    if model is not None and not Path(model).expanduser().exists():
        return model  # not a path: a name the loader looked up in the library
    return path.name.removesuffix(".gguf")


def serve(config: ServerConfig) -> None:
    """Blocks until the server is stopped (Ctrl-C); the engine thread ends with it.

    With `tensor_parallel` > 1 (under torchrun) rank 0 serves and the other ranks follow its
    forward passes until it stops."""
    use_threads(config.threads)
    if config.tensor_parallel > 1:
        if config.gpu_layers is not None:
            raise InvalidParameterError("tensor_parallel", "does not combine with --gpu-layers")
        with open_model(
            config.model,
            tensor_parallel=config.tensor_parallel,
            dtype=config.dtype,
            device=config.device,
            lora=config.lora,
            combine_lora=False,
        ) as loaded:
            if loaded is not None:  # rank 0; the other ranks have followed its steps and are done
                _serve(config, loaded)
        return

    def load() -> tuple[LoadedModel, LLMEngine, str]:
        loaded = load_model(config.model, dtype=config.dtype, device=config.device, gpu_layers=config.gpu_layers)
        attach_loras(loaded.model, loaded.config, config.lora, combine=False)
        attach_created_adapters(loaded)
        engine = new_engine(config, loaded)
        return loaded, engine, engine.decode_path  # the label loads a built package: torch work

    # Off the main thread, which the HTTP server keeps: see on_fresh_thread.
    _serve(config, *on_fresh_thread(load))


def attach_created_adapters(loaded: LoadedModel) -> None:
    """A created model's ADAPTERs (`llamita create`), installed together in one slot that every
    request naming the model runs with (ServerState.model_adapter), as Ollama serves a
    Modelfile's ADAPTER: the created model is its base with them. Nothing for other models."""
    if loaded.settings is not None and loaded.settings.adapters:
        attach_loras(loaded.model, loaded.config, list(loaded.settings.adapters), combine=True)


class GracefulServer(uvicorn.Server):
    """uvicorn's server, stopping the engine first: on SIGTERM or Ctrl-C it stops accepting
    connections, ends every queued and running request (a stream gets an error event and
    [DONE], a whole answer a 503), lets the handlers finish, and returns. SIGTERM, the normal
    way to stop a service, then exits with status 0 instead of uvicorn's re-raised signal."""

    def __init__(self, config: uvicorn.Config, engine_loop: EngineLoop, pool: ModelPool | None = None) -> None:
        super().__init__(config)
        self.engine_loop = engine_loop
        self.pool = pool

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM:
            self.should_exit = True
            return
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # no new connections while the requests end
            server.close()
        # Without this, uvicorn would wait for every stream to run to its max_tokens.
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)  # the models loaded on demand
        await asyncio.to_thread(self.engine_loop.stop)
        await super().shutdown(sockets)


def new_engine(config: ServerConfig, loaded: LoadedModel) -> LLMEngine:
    """The engine of a served model (its KV cache allocated, a built compiled step loaded)."""
    return LLMEngine(
        loaded, kv_cache_tokens=config.kv_cache_tokens, max_running=config.max_running, compile=config.compile
    )


def _serve(
    config: ServerConfig, loaded: LoadedModel, engine: LLMEngine | None = None, decode_path: str | None = None
) -> None:
    """Serve `loaded`, its LoRA adapters (one slot each) already installed, and the library;
    `engine` its engine when it was made already (off the main thread)."""
    adapters = list(loaded.model.lora.names)
    if engine is None:
        engine = new_engine(config, loaded)
    if decode_path is None:
        decode_path = engine.decode_path
    loop = EngineLoop(engine, max_queue=config.max_queue, request_timeout=config.request_timeout)
    name = config.model_name or served_name(loaded.path, config.model)

    def load_engine(name: str) -> EngineLoop:
        def load() -> LLMEngine:
            # By name, not path: a created model (`llamita create`) brings its settings and template.
            other = load_model(name, dtype=config.dtype, device=config.device)
            attach_created_adapters(other)
            return new_engine(config, other)

        # On a thread that ends: a request's worker thread lives on (see on_fresh_thread).
        engine = on_fresh_thread(load)
        return EngineLoop(engine, max_queue=config.max_queue, request_timeout=config.request_timeout)

    def estimate(path: Path) -> int:
        return served_bytes(
            path,
            kv_cache_tokens=config.kv_cache_tokens,
            max_running=config.max_running,
            kv_bytes_per_element=loaded.dtype.itemsize,
        )

    library = config.library and config.tensor_parallel == 1
    default_size = estimate(loaded.path) if library else 0
    keep_alive = (
        default_keep_alive() if config.keep_alive is None else parse_keep_alive(config.keep_alive, "--keep-alive")
    )
    pool_config = PoolConfig(
        library=library,
        keep_alive=keep_alive,
        load_timeout=config.request_timeout,
        max_memory=None if not library else config.max_memory or default_max_memory(default_size),
        max_loaded=config.max_loaded_models,
    )
    app = create_app(
        loop,
        name,
        api_key=config.api_key,
        data_dir=config.data_dir,
        cors_origins=config.cors_origins,
        strict_model_names=config.strict_model_names,
        pool_config=pool_config,
        load_engine=load_engine if library else None,
        estimate=estimate if library else None,
    )
    warning = exposure_warning(config.host, config.api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    loop.start()
    kernels = kernel_summary() if loaded.device.type == "cpu" else str(loaded.device)
    print(
        f"llamita: serving '{name}' ({loaded.dtype}, {kernels}, {threads_label()}, "
        f"context {engine.context_length} tokens, KV cache {str(engine.cache_dtype).removeprefix('torch.')}, "
        f"{decode_path} decode) on "
        f"http://{config.host}:{config.port}",
        flush=True,
    )
    if adapters:
        print(
            f"llamita: LoRA adapters (request them as model '{name}+NAME' or \"lora\": NAME): {', '.join(adapters)}",
            flush=True,
        )
    print(f"llamita: web chat at http://{config.host}:{config.port}/ (data in {app.state.chat_store.path})", flush=True)
    if library and config.max_memory is not None and default_size >= config.max_memory:
        print(
            f"llamita: WARNING: '{name}' alone takes about {format_bytes(default_size)} (estimated), "
            f"as much as --max-memory {format_bytes(config.max_memory)}: no other model can be loaded",
            file=sys.stderr,
            flush=True,
        )
    if library:
        print(
            f"llamita: the library's models load on demand (request them by name; keep_alive "
            f"{_duration(keep_alive)}, --max-memory {format_bytes(pool_config.max_memory or 0)})",
            flush=True,
        )
    try:
        GracefulServer(
            uvicorn.Config(app, host=config.host, port=config.port, log_level="info", lifespan="off"),
            loop,
            app.state.pool,
        ).run()
    finally:
        app.state.pool.close()
        loop.stop()


def _duration(seconds: float | None) -> str:
    return "for ever" if seconds is None else f"{seconds:g} s"
