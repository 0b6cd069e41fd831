"""The decode step ahead-of-time compiled (AOTInductor): one token per cache row, C++ throughout.

Eager decode of a small model spends most of its time between kernels (Python, the
dispatcher): SmolLM2-135M's step is 30 blocks of ~15 small ops. Here the step is exported once
with `torch.export` and compiled by AOTInductor into a shared library: RMSNorm, RoPE, SwiGLU,
the residual adds and the KV-cache writes become fused C++ loops around the int4/int8 matmul
and attention kernels (the same aten kernels eager calls), and a C++ wrapper runs them with no
Python, no guards and no per-call tracing.

What the package holds and what it does not:
- **No weights.** They are inputs of the exported function (`torch.func.functional_call`), so
  a package only depends on the model's structure (names, shapes, dtypes) and llamita's model
  code, is a few MB, and takes the live model's tensors (packed int4 codes included, which are
  only valid in the process that packed them) on every call without a copy.
- **One package per batch size.** The number of cache positions and of positions attended are
  symbolic: one package serves every position and every cache size, and each step attends
  only to `attend_length(p)` positions (the next multiple of KEY_BLOCK past the furthest
  position), so early tokens do not pay for the whole cache.
- Cached under `cache_dir()` by a key over everything the code depends on (`package_key`); a
  later process loads it in milliseconds. The first build of a model shape takes 1-2 minutes on
  2 cores (logged as a warning when it starts). A build holds `decode-KEY.lock` (flock) so two
  processes never build one package twice, writes to a temporary name and renames, and a
  failed build leaves `decode-KEY.failed` (its message) so it is not retried until the key
  changes (engine/step_builder.py builds in a background process and reads these).

Fused loops round to bfloat16 where eager does (`emulate_precision_casts`); sums still run in
another order, so bf16 greedy text can part from eager's at near-ties. Both are tested against
the float32 eager reference (tests/model/test_compiled.py). docs/performance.md has the figures.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.utils._pytree as pytree
from torch import nn

from llamita.kernels import native
from llamita.model.kv_cache import KVCache
from llamita.model.lora_linear import LoraLinear
from llamita.model.offload import OnDevice
from llamita.model.paged_kv_cache import PagedKVCache
from llamita.model.tensor_parallel import RowParallel, TiedHead, VocabParallelEmbedding, VocabParallelHead

if TYPE_CHECKING:
    from llamita.model.transformer import Transformer

log = logging.getLogger(__name__)

# Attended positions are rounded up to a multiple of this: fewer distinct lengths than one per
# token, and vector-friendly loops, at the cost of up to KEY_BLOCK - 1 masked positions.
KEY_BLOCK = 32
_UNCOMPILABLE = (RowParallel, VocabParallelEmbedding, VocabParallelHead, TiedHead, OnDevice)
_FORMAT = 3  # bump when the exported function's signature changes


def cache_dir() -> Path:
    """Where llamita keeps compiled decode steps: $LLAMITA_COMPILED_DIR if set, else
    $XDG_CACHE_HOME/llamita/aoti."""
    folder = os.environ.get("LLAMITA_COMPILED_DIR")
    return Path(folder) if folder else native.cache_root() / "aoti"


def failure_path(package: Path) -> Path:
    """Where a failed build of `package` records why (JSON: {"error", "said"})."""
    return package.with_suffix(".failed")


def read_failure(package: Path) -> dict[str, object] | None:
    """The recorded failure of `package`'s build, or None if none was recorded."""
    try:
        found: dict[str, object] = json.loads(failure_path(package).read_text(encoding="utf-8"))
        return found
    except (OSError, ValueError):
        return None


def record_failure(package: Path, error: str, said: bool = False) -> None:
    """Record that building `package` failed with `error` (replaced atomically)."""
    marker = failure_path(package)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(f".failed.{os.getpid()}")
    tmp.write_text(json.dumps({"error": error, "said": said}), encoding="utf-8")
    os.replace(tmp, marker)


@contextlib.contextmanager
def build_lock(package: Path, wait: bool) -> Iterator[bool]:
    """Hold `package`'s build lock (an flock on decode-KEY.lock, released by the kernel if the
    holder dies). Yields False instead of waiting when `wait` is False and another process
    holds it."""
    package.parent.mkdir(parents=True, exist_ok=True)
    with open(package.with_suffix(".lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_in_progress(package: Path) -> bool:
    """Whether some process holds `package`'s build lock now."""
    with build_lock(package, wait=False) as free:
        return not free


def attend_length(furthest: int, cache_positions: int) -> int:
    """Cache positions a step attends to when its furthest row is at position `furthest`."""
    return min(cache_positions, (furthest // KEY_BLOCK + 1) * KEY_BLOCK)


def compile_blocker(model: nn.Module) -> str | None:
    """Why `model`'s decode step is not compiled (it then runs eager), or None if it can be.

    Tensor-parallel layers (collectives), layers split across devices and models holding LoRA
    adapters are left eager: an exported step would fix which adapter rows it applies (the
    selection is state of the LoRA layers, not an input).
    """
    for module in model.modules():
        if isinstance(module, LoraLinear):
            return "LoRA adapters are loaded"
        if isinstance(module, _UNCOMPILABLE):
            kind = "layers split across devices" if isinstance(module, OnDevice) else "tensor parallelism"
            return f"{kind} ({type(module).__name__})"
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type != "cpu":
        return f"the compiled step is built for the CPU (the model is on {device})"
    return None


class _DecodeBody(nn.Module):
    """The model's decode step as a module whose every tensor has a name: the fused q/k/v and
    gate/up layers (kept outside the model's module tree) are registered here too."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        fused = {}
        for i, block in enumerate(model.blocks()):
            fused[f"qkv{i}"] = block.self_attn.fused_qkv
            fused[f"gate_up{i}"] = block.mlp.fused_gate_up
        self.fused = nn.ModuleDict({k: v for k, v in fused.items() if v is not None})

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        key_positions: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
    ) -> torch.Tensor:
        cache = KVCache.over(keys, values)
        length = key_positions.shape[0]
        torch._check(length <= cache.max_len)  # what attend_length guarantees
        return self.last_logits(tokens, positions, cache, length)

    def last_logits(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache | PagedKVCache, length: int
    ) -> torch.Tensor:
        """(B, vocab) logits of the step, attending over the first `length` cache positions."""
        logits: torch.Tensor = self.model(tokens, positions, cache, None, last_only=True, key_length=length)
        return logits[:, -1]


class _Exported(nn.Module):
    """What is exported: the body with its weights as arguments (the body itself is held
    outside this module's tree, so export lifts no parameter as a constant)."""

    body: _DecodeBody  # held in __dict__ (set in __init__)

    def __init__(self, body: _DecodeBody) -> None:
        super().__init__()
        self.__dict__["body"] = body

    def forward(self, inputs: tuple[object, ...], weights: dict[str, torch.Tensor]) -> torch.Tensor:
        logits: torch.Tensor = torch.func.functional_call(self.body, weights, inputs, tie_weights=False, strict=True)
        return logits


def _source_digest() -> str:
    """Hash of the code a compiled step is made of (model/ and kernels/): an edited model
    must not run an old package."""
    h = hashlib.sha256()
    folders = [
        resources.files("llamita.model"),
        resources.files("llamita.kernels"),
        resources.files("llamita.kernels") / "csrc",
    ]  # the C++ kernels the step calls
    for folder in folders:
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith((".py", ".cpp", ".h")):
                h.update(entry.name.encode())
                h.update(entry.read_bytes())
    return h.hexdigest()


def package_key(model: Transformer, weights: dict[str, torch.Tensor], batch: int, kind: str = "static") -> str:
    """Everything a package depends on: the model's structure (config, each weight's name,
    shape, dtype, stride), the batch size, the kind of cache (static rows or paged blocks),
    llamita's model code, torch, the CPU's vector
    capability it was built for and the level of llamita's kernels it calls (each level's
    operators have their own namespace, native.py). Weight values are not part of it."""
    h = hashlib.sha256()
    parts = [
        _FORMAT,
        batch,
        kind,
        repr(model.config),
        torch.__version__,
        torch.backends.cpu.get_cpu_capability(),
        native.kernel_level(),
        _source_digest(),
    ]
    parts += [(n, tuple(t.shape), str(t.dtype), t.stride()) for n, t in weights.items()]
    h.update(repr(parts).encode())
    return h.hexdigest()[:32]


class CompiledDecoder:
    """`step(tokens, positions, cache)`: logits (B, vocab) float32 of one token per cache row.

    tokens, positions: (B, 1) int64 with B == cache.n_rows (every row steps). The first call for
    a batch size loads its package from `root` (default `cache_dir()`) or, with `build`, builds
    it there in the foreground; without `build` only a package already built is used (`ready`
    says whether one is). The model's tensors are gathered once, here: a model whose layers are
    replaced afterwards (LoRA, fine-tuning) needs a new decoder.
    """

    kind = "static"  # the cache layout the step takes (compiled_paged.py: "paged")

    def __init__(self, model: Transformer, root: Path | None = None, build: bool = True) -> None:
        blocker = compile_blocker(model)
        if blocker is not None:
            raise ValueError(f"the decode step cannot be compiled with {blocker}")
        self.model = model
        self.root = Path(root) if root is not None else cache_dir()
        self.build = build
        self._body = self._make_body()
        weights: dict[str, torch.Tensor] = dict(self._body.named_parameters(remove_duplicate=False))
        weights.update(self._body.named_buffers(remove_duplicate=False))
        self._weights = weights
        self._flat_weights = pytree.tree_flatten(weights)[0]
        self._runners: dict[int, Callable[[list[torch.Tensor]], list[torch.Tensor]]] = {}
        self._paths: dict[int, Path] = {}
        self._specs: dict[int, str] = {}
        self._tried: dict[Path, int] = {}  # package -> mtime of a file that did not load
        self._key_positions = torch.arange(model.config.context_length)
        self.built_seconds: dict[int, float] = {}  # batch -> seconds to load (or build and load) its package

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        if tokens.shape != (cache.n_rows, 1) or positions.shape != tokens.shape:
            raise ValueError(
                f"a compiled step takes (rows, 1) tokens and positions for all "
                f"{cache.n_rows} cache rows, got {tuple(tokens.shape)}"
            )
        length = attend_length(int(positions.max()), cache.max_len)
        return self._run(cache.n_rows, [tokens, positions, self._key_positions[:length], *cache.k, *cache.v])

    def _run(self, batch: int, inputs: list[torch.Tensor]) -> torch.Tensor:
        run = self._runners.get(self._bucket(batch)) or self._runner(batch)
        with torch.inference_mode():
            return run([*inputs, *self._flat_weights])[0]

    def _bucket(self, batch: int) -> int:
        """The package that serves `batch` rows: one per batch size here."""
        return batch

    def _rows_label(self, batch: int) -> str:
        return f"batch {batch}"

    def package_path(self, batch: int) -> Path:
        """The file the step for `batch` rows is kept in."""
        batch = self._bucket(batch)
        if batch not in self._paths:  # the key hashes llamita's model code: once per decoder
            key = package_key(self.model, self._weights, batch, self.kind)
            self._paths[batch] = self.root / f"decode-{key}.pt2"
        return self._paths[batch]

    def ready(self, batch: int) -> bool:
        """Whether the step for `batch` rows can run now: loaded already, loaded from disk
        here, or (with `build`) built here in the foreground."""
        if self._bucket(batch) in self._runners:
            return True
        if self.build:
            self._runner(batch)
            return True
        path = self.package_path(batch)
        try:  # a server asks every step: load only a file not tried before
            stamp = path.stat().st_mtime_ns
        except OSError:
            return False
        if self._tried.get(path) == stamp:
            return False
        self._tried[path] = stamp
        start = time.perf_counter()
        loaded = _load(path, self._spec(batch))
        if loaded is None:
            return False
        self.built_seconds[self._bucket(batch)] = time.perf_counter() - start
        self._runners[self._bucket(batch)] = loaded
        return True

    def build_now(self, batch: int, wait: bool = True, lock: bool = True) -> bool:
        """Build the package for `batch` rows unless a loadable one exists, under its build
        lock; False (and nothing built) when `wait` is False and another process holds it.
        lock=False: the caller holds `build_lock(self.package_path(batch))` already."""
        path = self.package_path(batch)
        if lock:
            with build_lock(path, wait) as held:
                return held and self.build_now(batch, lock=False)
        if _load(path, self._spec(batch)) is None:  # none yet, or damaged: (re)build it
            log.warning(
                "compiling the decode step for %s (once per model shape; about 1-2 minutes on 2 cores) into %s",
                self._rows_label(batch),
                path,
            )
            _build(self._body, self._example(batch), self._weights, self._dynamic(batch), path)
        failure_path(path).unlink(missing_ok=True)
        return True

    def prepare(self, batch: int) -> float:
        """Load (or build, the first time for this model shape) the step for `batch` rows now,
        rather than inside the first decode step: a command says so before its answer starts,
        and the build is not counted as generation time. Seconds it took."""
        if self._bucket(batch) not in self._runners:
            self._runner(batch)
        return self.built_seconds[self._bucket(batch)]

    def _make_body(self) -> _DecodeBody:
        return _DecodeBody(self.model)

    def _example(self, batch: int) -> tuple[object, ...]:
        """Inputs of the exported step for tracing (weights apart)."""
        cfg = self.model.config
        cache = KVCache(cfg, batch, 2 * KEY_BLOCK, dtype=self.model.dtype)
        tokens = torch.ones((batch, 1), dtype=torch.int64)
        return tokens, tokens.clone(), self._key_positions[:KEY_BLOCK], cache.k, cache.v

    def _dynamic(self, batch: int) -> tuple[object, ...]:
        """`_example`'s symbolic dimensions: the positions attended and the cache positions
        (min 2: export specializes sizes 0 and 1)."""
        cfg = self.model.config
        keys_dim = torch.export.Dim("attended", min=2, max=cfg.context_length)
        cache_dim = torch.export.Dim("cache_positions", min=2, max=cfg.context_length)
        per_layer = [{2: cache_dim}] * cfg.n_layers
        return None, None, {0: keys_dim}, per_layer, per_layer

    def _spec(self, batch: int) -> str:
        """The flat-input layout a package for `batch` rows must take."""
        bucket = self._bucket(batch)
        if bucket not in self._specs:
            example = (self._example(batch), self._weights)
            self._specs[bucket] = pytree.treespec_dumps(pytree.tree_flatten((example, {}))[1])
        return self._specs[bucket]

    def _runner(self, batch: int) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
        path, spec = self.package_path(batch), self._spec(batch)
        start = time.perf_counter()
        loaded = _load(path, spec)
        if loaded is None:
            self.build_now(batch)
            loaded = _load(path, spec)
            if loaded is None:
                raise RuntimeError(f"the compiled decode step at {path} does not load")
        self.built_seconds[self._bucket(batch)] = time.perf_counter() - start
        self._runners[self._bucket(batch)] = loaded
        return loaded


def _load(path: Path, spec: str) -> Callable[[list[torch.Tensor]], list[torch.Tensor]] | None:
    """The package's runner (flat tensor list -> flat outputs) if it exists and takes `spec`."""
    if not path.exists():
        return None
    try:
        # The C++ loader behind torch._inductor.aoti_load_package, called directly: importing
        # torch._inductor costs ~1.3 s, this load ~10 ms (the start-up target is 2 s).
        loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
        if loader.get_call_spec()[0] != spec:
            return None
    except (RuntimeError, OSError) as e:  # damaged or from another build: rebuild it
        log.warning("ignoring the compiled decode step %s: %s", path, e)
        return None
    # boxed_run takes the flat inputs (AOTICompiledModel.__call__ re-parses the spec per call).
    return loader.boxed_run


def _build(
    body: _DecodeBody,
    inputs: tuple[object, ...],
    weights: dict[str, torch.Tensor],
    dynamic: tuple[object, ...],
    path: Path,
) -> None:
    # torch's export and inductor warn about their own internals (FutureWarning, UserWarning):
    # nothing a user of llamita can act on, so they stay out of the answer's terminal.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(
            _Exported(body), (inputs, weights), strict=False, dynamic_shapes=(dynamic, {name: None for name in weights})
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written next to its final name and renamed: a crash or a concurrent build never leaves
    # a half-written package under the name others load.
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".pt2", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(
                exported, package_path=tmp, inductor_configs={"emulate_precision_casts": True}
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
