"""ModelPool: the models one server holds, by name. The default model (`-m`, else the embedded
one) is loaded at start and stays; any other library model loads on demand in a worker thread,
stays for its `keep_alive` after its last request, and is unloaded, least recently used first,
when the next would not fit in `max_memory` (estimated from the file before loading).

    pool.resolve("llama3.2:1b")       # -> the pool key, or the default's, or a 404 (strict)
    model = pool.acquire(key, 300.0)  # blocks (in a worker thread) while it loads; a lease
    ... model.state.loop.submit(...)  # the model cannot be unloaded while a lease is held
    pool.release(model)               # its keep_alive starts now

Every lease is released when the HTTP exchange that took it has ended, stream included (app.py's
ModelLeases), so an unload never pulls the engine from under a request. One lock guards the
table; loading, unloading (EngineLoop.stop joins the engine thread) and waiting happen outside
it. A sweeper thread unloads expired models.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING

from llamita.serving.errors import APIError
from llamita.serving.keep_alive import format_bytes
from llamita.serving.model_memory import give_back_memory
from llamita.serving.state import ServerState

if TYPE_CHECKING:  # imported when first needed: the library is not read at start-up
    from llamita.library.local import LocalModel

log = logging.getLogger(__name__)

# Loads the model at `path` (library name `name`) and returns its state, engine thread started.
Loader = Callable[[str, Path], ServerState]


@dataclass
class PooledModel:
    """One model of the pool. `state` is None while it loads."""

    name: str
    path: Path
    size: int  # estimated resident bytes (weights + KV cache + tokenizer)
    state: ServerState | None = None
    pinned: bool = False  # the default model: never expires nor is evicted
    leases: int = 0  # requests holding it (from routing to the end of the answer)
    keep_alive: float | None = None  # seconds after the last lease; None: for ever
    expires_at: float | None = None  # Unix seconds; None while leased, pinned or kept for ever
    last_used: float = field(default_factory=time.time)
    loaded: threading.Event = field(default_factory=threading.Event)  # set when loaded or failed
    error: BaseException | None = None  # why the load failed
    unloaded: bool = False  # removed from the pool (a holder of a stale reference retries)


@dataclass(frozen=True)
class PoolConfig:
    """library: serve every local model (False: only the default, as `create_app` alone does).
    max_memory: bytes all loaded models may take together (estimates); None: no limit.
    keep_alive: seconds a model stays after its last request when the request says nothing;
    None: for ever. load_timeout: seconds a request waits for a load or for memory to free;
    None: no limit. max_loaded: models loaded at once, the default one included (Ollama's
    OLLAMA_MAX_LOADED_MODELS); None: no limit."""

    library: bool = False
    max_memory: int | None = None
    max_loaded: int | None = None
    keep_alive: float | None = 300.0
    load_timeout: float | None = None


class ModelPool:
    def __init__(
        self,
        default: ServerState,
        default_path: Path,
        default_size: int,
        *,
        config: PoolConfig = PoolConfig(),
        loader: Loader | None = None,
        estimate: Callable[[Path], int] | None = None,
    ) -> None:
        self.default = default
        self.config = config
        self._loader = loader
        self._estimate = estimate
        self._cv = threading.Condition()
        self._models: dict[str, PooledModel] = {
            default.model_name: PooledModel(default.model_name, default_path, default_size, default, pinned=True)
        }
        self._models[default.model_name].loaded.set()
        self._stopping: list[PooledModel] = []  # out of the table, engine not yet stopped
        self._load_lock = threading.Lock()  # held by the one load in progress
        self.loads = self.unloads = 0  # counts, for /metrics
        self._closed = False
        # Started with the first model loaded on demand: a pool of the default alone has none.
        self._sweeper: threading.Thread | None = None

    # -- names ---------------------------------------------------------------------------------
    def resolve(self, name: object) -> str:
        """The pool key a request's `model` means. No name, the default's names (base,
        base+adapter, with or without ':latest'): the default. A library model: its name. Any
        other: a 404 with --strict-model-names, else the default (llama.cpp's leniency) -- but
        never for NAME+ADAPTER with an adapter the default lacks. Reads the library (disk):
        call it from a worker thread unless `resolve_loaded` answered."""
        known = self.resolve_loaded(name)
        if known is not None:
            return known
        assert isinstance(name, str)
        if self.config.library:
            found = _find_local(name)
            if found is not None:
                return (
                    self.default.model_name
                    if _same_file(found.path, self._models[self.default.model_name].path)
                    else found.name
                )
        if self.default.strict_model_names:
            raise self.unknown(name)
        if "+" in name:
            self.default.adapter_of({"model": name})  # 404 naming the adapters it has
        return self.default.model_name

    def resolve_loaded(self, name: object) -> str | None:
        """The key without reading the disk: the default's names, or a model already in the
        pool under that name; None: the library must be read."""
        if name is None or name == "":
            return self.default.model_name
        if not isinstance(name, str):
            raise APIError(400, "'model' must be a string", param="model")
        if name.removesuffix(":latest") in self.default.model_names():
            return self.default.model_name
        with self._cv:
            for key in (name, name.removesuffix(":latest"), name + ":latest"):
                if key in self._models and not self._models[key].unloaded:
                    return key
        if not self.config.library:
            if self.default.strict_model_names:
                raise self.unknown(name)
            if "+" in name:
                self.default.adapter_of({"model": name})
            return self.default.model_name
        return None

    def unknown(self, name: str) -> APIError:
        """Ollama's 404 for a model that is not here."""
        where = (
            "`llamita list` shows the local models"
            if self.config.library
            else f"this server serves {', '.join(repr(n) for n in self.default.model_names())}"
        )
        return APIError(
            404, f"model '{name}' not found, try pulling it first ({where})", param="model", code="model_not_found"
        )

    # -- leases --------------------------------------------------------------------------------
    def try_acquire(self, key: str, keep_alive: float | None | EllipsisType = ...) -> PooledModel | None:
        """A lease on `key` if it is loaded now (never blocks on a load), else None."""
        with self._cv:
            model = self._models.get(key)
            if model is None or model.state is None:
                return None
            self._lease(model, keep_alive)
            return model

    def acquire(self, key: str, keep_alive: float | None | EllipsisType = ...) -> PooledModel:
        """A lease on `key`, loading it first (one load per name; others wait on it). Blocks:
        call from a worker thread. keep_alive: seconds it stays after this request (None: for
        ever; ...: the model's current setting or the server's default)."""
        deadline = None if self.config.load_timeout is None else time.monotonic() + self.config.load_timeout
        while True:
            with self._cv:
                model = self._models.get(key)
                if model is not None and model.state is not None:
                    self._lease(model, keep_alive)
                    return model
            if model is not None:  # another request is loading it
                if not model.loaded.wait(_left(deadline)):
                    raise self._timeout(key, "loading")
                if model.error is not None:
                    raise model.error
                continue
            model = self._load(key, keep_alive, deadline)
            if model is not None:
                return model

    def release(self, model: PooledModel) -> None:
        """End a lease; the last one starts the model's keep_alive (0: unload now)."""
        with self._cv:
            model.leases -= 1
            model.last_used = time.time()
            if model.leases == 0 and not model.pinned and model.keep_alive is not None:
                model.expires_at = model.last_used + model.keep_alive
            self._cv.notify_all()

    def unload(self, key: str) -> bool:
        """Unload `key` once its running requests end (the sweeper does it); False if it is not
        loaded. The default model stays."""
        with self._cv:
            model = self._models.get(key)
            if model is None or model.pinned:
                return False
            model.keep_alive = 0.0
            model.expires_at = time.time() if model.leases == 0 else None
            self._cv.notify_all()
            return True

    def _lease(self, model: PooledModel, keep_alive: float | None | EllipsisType) -> None:
        model.leases += 1
        model.expires_at = None
        model.last_used = time.time()
        if keep_alive is not ...:
            model.keep_alive = keep_alive

    # -- loading and unloading -------------------------------------------------------------------
    def _load(self, key: str, keep_alive: float | None | EllipsisType, deadline: float | None) -> PooledModel | None:
        """Load `key` and return a lease on it; None if another request started loading it first."""
        if self._loader is None or self._estimate is None:
            raise self.unknown(key)
        found = _find_local(key)
        if found is None:
            raise self.unknown(key)
        size = self._estimate(found.path)
        # `...` means the request gave no keep_alive: the server's default holds.
        chosen = self.config.keep_alive if keep_alive is ... else keep_alive
        model = PooledModel(key, found.path, size, keep_alive=chosen)
        with self._cv:
            if key in self._models:
                return None
            self._check_fits(model)
            self._models[key] = model  # others now wait on it; its size counts from here
            model.leases = 1
        try:
            # One load at a time: two models that each need the other's room would otherwise
            # both wait for it, neither loaded nor idle.
            left = _left(deadline)
            if not self._load_lock.acquire(timeout=-1 if left is None else left):
                raise self._timeout(key, "another model's load")
            try:
                self._make_room(model, deadline)
                model.state = self._loader(key, found.path)
            finally:
                self._load_lock.release()
        except BaseException as e:
            with self._cv:
                self._models.pop(key, None)
                model.error, model.unloaded = e, True
                self._cv.notify_all()
            model.loaded.set()
            raise
        with self._cv:
            self.loads += 1
            model.last_used = time.time()
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, name="llamita-model-sweeper", daemon=True)
                self._sweeper.start()
            self._cv.notify_all()
        model.loaded.set()
        log.info("loaded %s (%s estimated)", key, format_bytes(size))
        return model

    def _check_fits(self, model: PooledModel) -> None:
        """507 for a model that cannot fit in max_memory even with every other model but the
        default unloaded; 503 where max_loaded leaves no room beside the default."""
        count = self.config.max_loaded
        if count is not None and count <= sum(1 for m in self._models.values() if m.pinned):
            raise APIError(
                503,
                f"model '{model.name}' cannot be loaded: this server holds at most {count} "
                "model(s) at once (--max-loaded-models, OLLAMA_MAX_LOADED_MODELS), its default included",
                param="model",
                type="server_error",
            )
        limit = self.config.max_memory
        if limit is None:
            return
        pinned = sum(m.size for m in self._models.values() if m.pinned)
        if model.size + pinned > limit:
            raise APIError(
                507,
                f"model '{model.name}' needs about {format_bytes(model.size)} (weights, "
                f"KV cache and tokenizer, estimated) and the server may use "
                f"{format_bytes(limit)} (--max-memory), of which the default model holds "
                f"{format_bytes(pinned)}: it cannot be loaded; raise --max-memory or "
                "choose a smaller quantization",
                param="model",
                code="insufficient_memory",
                type="server_error",
            )

    def _make_room(self, model: PooledModel, deadline: float | None) -> None:
        """Unload least recently used idle models until `model` fits in max_memory and
        max_loaded; while the only ones that would free room are answering requests, wait for
        them to finish."""
        limit, count = self.config.max_memory, self.config.max_loaded
        while True:
            with self._cv:
                # Loaded and unloading models, and this one; not those waiting to load.
                held = [m for m in self._models.values() if m.state is not None] + self._stopping
                if (limit is None or model.size + sum(m.size for m in held) <= limit) and (
                    count is None or 1 + len(held) <= count
                ):
                    return
                idle = sorted(
                    (
                        m
                        for m in self._models.values()
                        if m is not model and not m.pinned and m.state is not None and m.leases == 0
                    ),
                    key=lambda m: m.last_used,
                )
                victim = idle[0] if idle else None
                if victim is not None:
                    self._remove(victim)
                elif not self._cv.wait(_left(deadline)):
                    raise self._timeout(model.name, "memory to free (other models are answering requests)")
            if victim is not None:
                self._stop(victim, "to make room for " + model.name)

    def _remove(self, model: PooledModel) -> None:
        """Take `model` out of the table (the lock is held); _stop ends its engine after. Until
        its memory is given back it still counts against max_memory (and until its engine has
        stopped /api/ps still lists it)."""
        del self._models[model.name]
        model.unloaded = True
        self._stopping.append(model)
        self._cv.notify_all()

    def _stop(self, model: PooledModel, why: str) -> None:
        state = model.state
        if state is not None:
            state.loop.stop()
        del state
        with self._cv:
            model.state = None
        give_back_memory()  # the model's memory, freed by the line above, goes back to the system
        with self._cv:
            self._stopping.remove(model)
            self.unloads += 1
            self._cv.notify_all()
        log.info("unloaded %s (%s)", model.name, why)

    def _sweep(self) -> None:
        """Unload every model whose keep_alive ran out; sleep until the next one does."""
        while True:
            with self._cv:
                if self._closed:
                    return
                now = time.time()
                expired = [
                    m
                    for m in self._models.values()
                    if m.expires_at is not None and m.expires_at <= now and m.leases == 0 and not m.pinned
                ]
                for m in expired:
                    self._remove(m)
                if not expired:
                    times = [m.expires_at for m in self._models.values() if m.expires_at is not None]
                    self._cv.wait(None if not times else max(0.0, min(times) - now) + 0.001)
            for m in expired:
                self._stop(m, "keep_alive ran out")

    def _timeout(self, key: str, what: str) -> APIError:
        return APIError(
            504,
            f"model '{key}' waited {self.config.load_timeout:g} s for {what} (--request-timeout); retry later",
            code="request_timeout",
        )

    # -- views ---------------------------------------------------------------------------------
    def loaded(self) -> list[PooledModel]:
        """The models loaded now (not those still loading; those being unloaded too), the
        default first."""
        with self._cv:
            return [m for m in [*self._models.values(), *self._stopping] if m.state is not None]

    def get(self, key: str) -> PooledModel | None:
        with self._cv:
            return self._models.get(key)

    def close(self) -> None:
        """Stop every engine this pool loaded (not the default's: its owner stops it)."""
        with self._cv:
            self._closed = True
            others = [m for m in self._models.values() if not m.pinned]
            for m in others:
                self._remove(m)
            self._cv.notify_all()
        for m in others:
            self._stop(m, "the server stops")


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _find_local(name: str) -> LocalModel | None:
    from llamita.library.local import find_local
    from llamita.library.names import parse_name

    try:
        if parse_name(name).kind == "path":
            return None  # a request never names a file on the server's disk
        return find_local(name)
    except (ValueError, OSError):
        return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
