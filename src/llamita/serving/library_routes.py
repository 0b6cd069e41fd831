"""The library over HTTP, in Ollama's shapes: /api/tags (every local model), /api/ps (the
loaded ones, with expires_at and size_vram), /api/show, /api/pull (streamed progress),
/api/delete, /api/copy; and OpenAI's /v1/models over the same list.

The served default model comes first, with base+ADAPTER for each LoRA adapter; without the
library (`create_app` alone) it is all these routes know."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from llamita.errors import ModelFileError
from llamita.jobs.model_info import FILE_TYPES
from llamita.serving.errors import APIError, api_error
from llamita.serving.model_pool import ModelPool, PooledModel
from llamita.serving.request_body import field, read_json_object
from llamita.serving.state import ServerState, server_state

router = APIRouter()
NEVER = "0001-01-01T00:00:00Z"  # Ollama's zero time: what /api/ps shows for a model that stays
_SHA256 = re.compile(r"(?:sha256[-:])?([0-9a-f]{64})")


def _pool(request: Request) -> ModelPool:
    pool: ModelPool = request.app.state.pool
    return pool


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _param_size(n: int | None) -> str:
    if not n:
        return ""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


# ------------------------------------------------------------------------------- entries


def _details(state: ServerState) -> dict[str, Any]:
    meta, loaded = state.loaded.metadata, state.loaded
    file_type = meta.get("general.file_type")
    quantization = FILE_TYPES.get(int(file_type)) if file_type is not None else None
    return {
        "parent_model": "",
        "format": loaded.format,
        "family": loaded.config.architecture,
        "families": [loaded.config.architecture],
        "parameter_size": meta.get("general.size_label") or _param_size(loaded.config.n_params()),
        "quantization_level": quantization or str(loaded.dtype).removeprefix("torch."),
    }


def _size_on_disk(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _digest(path: Path) -> str:
    """The file's SHA-256 where its name already says it (a Hugging Face or Ollama blob)."""
    match = _SHA256.fullmatch(path.resolve().name)
    return match.group(1) if match else ""


def served_entries(state: ServerState) -> list[dict[str, Any]]:
    """The served model, then base+NAME for each LoRA adapter (what a request's `model` may
    name), so that Ollama clients such as Open WebUI offer the adapters in their model list.
    An adapter's details name the base as its parent_model, as Ollama's do for a model made
    FROM another."""
    path = state.loaded.path
    modified, size = _iso(path.stat().st_mtime), _size_on_disk(path)
    entries = []
    for name in state.model_names():
        details = _details(state)
        if name != state.model_name:
            details["parent_model"] = state.model_name
        entries.append(
            {
                "name": name,
                "model": name,
                "modified_at": modified,
                "size": size,
                "digest": _digest(path),
                "details": details,
            }
        )
    return entries


def _library_entries(default_path: Path) -> list[dict[str, Any]]:
    """Every local model but the served default (read from disk: run in a worker thread)."""
    from llamita.library.describe import describe
    from llamita.library.local import local_models

    entries = []
    for m in local_models():
        if not m.path.exists() or _same(m.path, default_path):
            continue
        params = m.manifest.parameters if m.manifest and m.manifest.parameters else None
        quant = m.quantization
        if params is None or quant is None:
            d = describe(m.path)
            params, quant = params or d.parameters, quant or d.quantization
        entries.append(
            {
                "name": m.name,
                "model": m.name,
                "modified_at": _iso(m.modified),
                "size": m.size_bytes,
                "digest": _digest(m.path),
                "details": {
                    "parent_model": "",
                    "format": "gguf" if m.path.is_file() else "safetensors",
                    "family": "llama",
                    "families": ["llama"],
                    "parameter_size": _param_size(params),
                    "quantization_level": quant or "",
                },
            }
        )
    return entries


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


async def all_entries(request: Request) -> list[dict[str, Any]]:
    """/api/tags' list: the served model and its adapters, then the library."""
    state, pool = server_state(request), _pool(request)
    entries = served_entries(state)
    if pool.config.library:
        entries += await asyncio.to_thread(_library_entries, state.loaded.path)
    return entries


@router.get("/api/tags")
async def tags(request: Request) -> JSONResponse:
    return JSONResponse({"models": await all_entries(request)})


def _loaded_entry(model: PooledModel) -> list[dict[str, Any]]:
    """/api/ps entries of one loaded model (a model with adapters: one per name)."""
    state = model.state
    assert state is not None
    if model.expires_at is not None:
        expires = _iso(model.expires_at)
    elif model.keep_alive is not None and not model.pinned:  # answering now: counts from its end
        expires = _iso(model.last_used + model.keep_alive)
    else:
        expires = NEVER
    on_gpu = state.loaded.device.type == "cuda"
    entries = served_entries(state)
    for entry in entries:
        entry.pop("modified_at")
        entry["size"] = model.size or entry["size"]
        entry.update(expires_at=expires, context_length=state.context_length, size_vram=entry["size"] if on_gpu else 0)
    return entries


@router.get("/api/ps")
async def ps(request: Request) -> JSONResponse:
    """The loaded models: size is the memory estimate the pool counts (the file size for a
    default model served without the library), size_vram the part on a GPU (0 on a CPU)."""
    return JSONResponse({"models": [e for m in _pool(request).loaded() for e in _loaded_entry(m)]})


@router.post("/api/show")
async def show(request: Request) -> JSONResponse:
    body = await read_json_object(request)
    name = body.get("model") or body.get("name")
    pool = _pool(request)
    key = pool.resolve_loaded(name)
    if key is None:
        key = await asyncio.to_thread(pool.resolve, name)
    model = pool.get(key)
    if model is not None and model.state is not None:
        state = model.state
        meta = state.loaded.metadata
        info = {
            k: v for k, v in meta.items() if not k.startswith("tokenizer.") and isinstance(v, (str, int, float, bool))
        }
        return JSONResponse(
            {
                "modelfile": "",
                "parameters": "",
                "template": meta.get("tokenizer.chat_template", ""),
                "details": _details(state),
                "model_info": info,
                "capabilities": ["completion", "tools"],
                "modified_at": _iso(state.loaded.path.stat().st_mtime),
            }
        )
    return JSONResponse(await asyncio.to_thread(_show_unloaded, key))


def _show_unloaded(name: str) -> dict[str, Any]:
    from llamita.library.describe import describe
    from llamita.library.local import find_local

    found = find_local(name)
    if found is None:
        raise APIError(404, f"model '{name}' not found", param="model", code="model_not_found")
    d = describe(found.path)
    info = {k: v for k, v in d.metadata.items() if isinstance(v, (str, int, float, bool))}
    return {
        "modelfile": "",
        "parameters": "",
        "template": d.template or "",
        "license": d.license or "",
        "details": {
            "parent_model": "",
            "format": "gguf" if found.path.is_file() else "safetensors",
            "family": d.architecture or "llama",
            "families": [d.architecture or "llama"],
            "parameter_size": _param_size(d.parameters),
            "quantization_level": found.quantization or d.quantization or "",
        },
        "model_info": info,
        "capabilities": ["completion", "tools"],
        "modified_at": _iso(found.modified),
    }


# ------------------------------------------------------------------------------- OpenAI's list


def _card(name: str, created: float, parent: str | None = None, max_model_len: int | None = None) -> dict[str, Any]:
    card: dict[str, Any] = {"id": name, "object": "model", "created": int(created), "owned_by": "llamita"}
    if max_model_len is not None:
        card["max_model_len"] = max_model_len
    if parent is not None:
        card["parent"] = parent
    return card


async def _cards(request: Request) -> list[dict[str, Any]]:
    state = server_state(request)
    cards = [
        _card(n, state.started_at, None if n == state.model_name else state.model_name, state.context_length)
        for n in state.model_names()
    ]
    if _pool(request).config.library:
        entries = await asyncio.to_thread(_library_entries, state.loaded.path)
        cards += [_card(e["name"], datetime.fromisoformat(e["modified_at"]).timestamp()) for e in entries]
    return cards


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": await _cards(request)})


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str) -> JSONResponse:
    """One model by its exact id (OpenAI's models.retrieve)."""
    for card in await _cards(request):
        if card["id"] == model_id:
            return JSONResponse(card)
    raise _pool(request).unknown(model_id)


# ------------------------------------------------------------------------------- pull


def _progress_class(emit: Any, digests: dict[str, tuple[str, int]]) -> type:
    """A `tqdm_class` for huggingface_hub's download that reports Ollama's progress objects."""

    class OllamaProgress:
        def __init__(self, *, total: int | None = None, initial: int = 0, desc: str = "", **_: Any) -> None:
            self.digest, size = digests.get(desc, ("", total or 0))
            self.total, self.completed = total or size, initial
            self._emit()

        def _emit(self) -> None:
            emit(
                {
                    "status": f"pulling {self.digest[:12]}",
                    "digest": f"sha256:{self.digest}",
                    "total": self.total,
                    "completed": self.completed,
                }
            )

        def update(self, n: int = 1) -> None:
            self.completed += n
            self._emit()

        def close(self) -> None:
            pass

        def __enter__(self) -> OllamaProgress:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    return OllamaProgress


def run_pull(name: str, emit: Callable[[dict[str, Any]], None], *, final: bool = True) -> None:
    """Pull `name`, telling `emit` each progress object, and {"status": "success"} at the end
    when `final` (runs in a worker thread)."""
    from llamita.library.pull import pull

    digests: dict[str, tuple[str, int]] = {}
    said: set[str] = set()

    def on_remote(remote: Any) -> None:
        for f in remote.files:
            if f.sha256 is not None:
                digests[Path(f.name).name] = (f.sha256, f.size)

    def status(line: str) -> None:
        # pull.py's status lines, as Ollama words its steps (each once).
        for step in ("pulling manifest", "verifying sha256 digest", "writing manifest"):
            if line.startswith(step) and step not in said:
                said.add(step)
                emit({"status": step})

    pull(name, tqdm_class=_progress_class(emit, digests), status=status, on_remote=on_remote)
    if final:
        emit({"status": "success"})


def stream_progress(work: Callable[[Callable[[dict[str, Any]], None]], None]) -> StreamingResponse:
    """Ollama's NDJSON progress stream: `work(emit)` runs in a worker thread and each object it
    emits is a line; an exception it raises once the stream has begun is the last line,
    {"error": ...} (the status is already 200)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    done = object()

    def emit(obj: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, obj)

    def run() -> None:
        try:
            work(emit)
        except Exception as e:
            loop.call_soon_threadsafe(queue.put_nowait, e)
        loop.call_soon_threadsafe(queue.put_nowait, done)

    async def lines() -> AsyncIterator[str]:
        task = asyncio.ensure_future(asyncio.to_thread(run))
        while (item := await queue.get()) is not done:
            if isinstance(item, Exception):
                yield json.dumps({"error": api_error(item).message}) + "\n"
            else:
                yield json.dumps(item) + "\n"
        await task

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.post("/api/pull")
async def pull_model(request: Request) -> Any:
    """Ollama's pull: {"model": NAME, "stream": true} -> NDJSON progress objects ending with
    {"status": "success"} (or {"error": ...}); stream false: the last object only."""
    body = await read_json_object(request)
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise APIError(400, "'model' must name the model to pull", param="model")
    if not field(body, "stream", bool, True):
        await asyncio.to_thread(run_pull, name, lambda _: None)
        return JSONResponse({"status": "success"})
    return stream_progress(lambda emit: run_pull(name, emit))


# ------------------------------------------------------------------------------- delete, copy


@router.delete("/api/delete")
async def delete_model(request: Request) -> Response:
    """Forget a library model (its files too when no other name uses them); a loaded one is
    unloaded first, once its running requests end. The served default model cannot go."""
    body = await read_json_object(request)
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise APIError(400, "'model' must name the model to delete", param="model")
    pool = _pool(request)
    if pool.resolve_loaded(name) == pool.default.model_name:
        raise APIError(
            400, f"'{name}' is the model this server was started with; it cannot be deleted while served", param="model"
        )
    key = await asyncio.to_thread(_local_name, name)
    pool.unload(key)
    await asyncio.to_thread(_remove, key)
    return Response(status_code=200)


def _local_name(name: str) -> str:
    from llamita.library.local import find_local

    found = find_local(name)
    if found is None:
        raise APIError(404, f"model '{name}' not found", param="model", code="model_not_found")
    return found.name


def _remove(name: str) -> None:
    from llamita.library.manage import remove_model

    try:
        remove_model(name)
    except ModelFileError as e:  # Ollama's store, the embedded model: not ours to delete
        raise APIError(400, str(e), param="model") from None


@router.post("/api/copy")
async def copy_model(request: Request) -> Response:
    """{"source": NAME, "destination": NEW}: a new library name for the same files."""
    body = await read_json_object(request)
    source = field(body, "source", str, required=True)
    destination = field(body, "destination", str, required=True)
    await asyncio.to_thread(_local_name, source)
    from llamita.library.manage import copy_model as copy

    await asyncio.to_thread(copy, source, destination)
    return Response(status_code=200)
