"""Resident memory of a loaded model against its GGUF file size, and greedy decode speed.

The goal this checks: resident memory after loading is at most 1.3 x the GGUF file size, plus
the KV cache. The measurement runs in a fresh child process (so nothing of this process, or of
an earlier model, is counted): it imports torch and llamita and runs each kernel the model uses
once on small inputs (library and kernel initialisation are not the model's memory), then

  rss_before       VmRSS before loading
  rss_after_load   VmRSS after `LLM(model)` returns (and a garbage collection)
  load_peak_rss    VmHWM when loading ends (peak reset after warm-up where Linux allows)
  peak_rss         VmHWM after generating
  rss_after_load_malloc_trim  VmRSS after glibc's malloc_trim(0): the part of the delta that
                   is freed heap glibc had kept (a diagnostic; generation runs after it)
Each is also split into anonymous memory (heap: the weights) and file pages (`*_anon`,
`*_file`; mapped file bytes count in VmRSS while the GGUF map is open, but the kernel can drop
them). A sampler thread records the peak anonymous RSS during the load (`load_peak_rss_anon`).

Then `--tokens` tokens are generated greedily from a short prompt through `LLM.generate`. Its
generator sizes the KV cache to prompt + max_tokens (not to a context length), so
`kv_cache_bytes` is what it allocated, 2 * n_layers * n_kv_heads * head_dim * length * dtype
bytes, and `kv_cache_bytes_at_ctx` what a `--ctx` cache would take; the limit is reported as
1.3 * file_bytes + kv_cache_bytes_at_ctx.

    python benchmarks/memory.py                        # the embedded default model
    python benchmarks/memory.py --model /work/scratch/models/rand-8b-Q4_K_M.gguf --tokens 16

Prints JSON. Memory in bytes, times in seconds, speed in tokens per second.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

PROMPT = "The capital of France is"
_LIMIT_FACTOR = 1.3


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process from /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def malloc_trim() -> bool:
    """Ask glibc to return freed heap memory to the OS; False where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


class PeakSampler:
    """Polls /proc/self/status in a thread and keeps the largest anonymous RSS seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, proc_status()["RssAnon"])
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_anon = max(self.peak_anon, proc_status()["RssAnon"])


def warm_up(dtype) -> None:  # noqa: ANN001 (torch.dtype; torch is imported in the child only)
    """Run every kernel a compact model uses once, on small inputs: thread pools, oneDNN and
    the int4 layout probe are initialised here, not during the measured load."""
    import torch
    import torch.nn.functional as F

    from llamita.config import ModelConfig
    from llamita.kernels.int4 import int4_linear, int4_supported
    from llamita.kernels.int8 import int8_linear, int8_supported, quantize_int8
    from llamita.model.kv_cache import KVCache
    from llamita.model.transformer import Transformer
    from llamita.weights.q4_pack import pack_q4
    from llamita.weights.quants import GGMLType, dequantize, quantize

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g)
    x = torch.randn(3, 256, generator=g).to(dtype)
    F.linear(x, w.to(dtype))
    for t in (GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1):
        raw = quantize(w, t)
        dequantize(raw, t, tuple(w.shape), dtype=dtype)
        if dtype == torch.bfloat16 and int4_supported() and t in (GGMLType.Q4_K, GGMLType.Q4_0):
            int4_linear(x, pack_q4(raw, t, tuple(w.shape)))
    if dtype == torch.bfloat16 and int8_supported():
        int8_linear(x, quantize_int8(64, 256, lambda a, b: w[a:b], dtype))
    # A tiny model: built on the meta device as the loader does (its first use imports ~60 MB
    # of torch internals), then a real one run through a KV cache like a generation step.
    cfg = ModelConfig(n_layers=1, dim=64, n_heads=2, n_kv_heads=1, ffn_dim=128, vocab_size=100)
    with torch.device("meta"):
        Transformer(cfg)
    model = Transformer(cfg).to(dtype).eval()
    cache = KVCache(cfg, 1, 8, dtype=dtype)
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]), torch.arange(3)[None], cache, last_only=True)
        model(torch.tensor([[4]]), torch.tensor([[3]]), cache, last_only=True)


def module_counts(model) -> dict[str, int]:  # noqa: ANN001
    """How many modules of each weight-holding kind the model has."""
    from collections import Counter

    kinds = ("Int4Linear", "Int8Linear", "Linear", "EncodedEmbedding", "Int8Embedding", "Embedding")
    return dict(Counter(type(m).__name__ for m in model.modules() if type(m).__name__ in kinds))


def model_bytes(model) -> int:  # noqa: ANN001
    """Bytes of the model's parameters and buffers (each storage once)."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "meta":
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def measure(model_path: Path, dtype_name: str, tokens: int, ctx: int, threads: int | None) -> dict[str, object]:
    """The child's job: everything in the module docstring, for one model."""
    import gc

    import torch

    from llamita.api.llm import LLM
    from llamita.engine.loader import resolve_device, resolve_dtype
    from llamita.errors import LlamitaError
    from llamita.sampling_params import SamplingParams

    if threads:
        torch.set_num_threads(threads)
    dtype = resolve_dtype(dtype_name, resolve_device("cpu"))
    warm_up(dtype)
    gc.collect()
    peak_reset = reset_peak()
    before = proc_status()

    start = time.perf_counter()
    with PeakSampler() as sampler:
        llm = LLM(model_path, dtype=dtype_name, device="cpu")
    load_seconds = time.perf_counter() - start
    load_peak = proc_status()["VmHWM"]
    gc.collect()
    after = proc_status()

    cfg = llm.config
    elem = torch.empty((), dtype=llm.loaded.dtype).element_size()
    kv_per_position = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * elem
    prompt_ids = llm.encode_prompt(PROMPT)
    kv_len = len(prompt_ids) + tokens
    result: dict[str, object] = {
        "model": str(model_path),
        "file_bytes": model_path.stat().st_size,
        "dtype": str(llm.loaded.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "rss_before": before["VmRSS"],
        "rss_after_load": after["VmRSS"],
        "rss_load_delta": after["VmRSS"] - before["VmRSS"],
        "rss_load_delta_anon": after["RssAnon"] - before["RssAnon"],
        "rss_after_load_file": after["RssFile"],
        "model_tensor_bytes": model_bytes(llm.loaded.model),
        "load_peak_rss": load_peak,
        "load_peak_rss_anon": sampler.peak_anon,
        "peak_reset_after_warm_up": peak_reset,
        "load_seconds": round(load_seconds, 2),
        "modules": module_counts(llm.loaded.model),
        "vocab_tokens": llm.tokenizer.vocab_size,
        "embedding_rows": cfg.vocab_size,
    }
    result["ratio"] = round(int(result["rss_load_delta"]) / int(result["file_bytes"]), 4)
    # Diagnostic only: how much of the delta is freed heap glibc keeps (not the model's memory).
    if malloc_trim():
        result["rss_after_load_malloc_trim"] = proc_status()["VmRSS"]

    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    gen_start = time.perf_counter()
    try:
        out = llm.generate(prompt_token_ids=prompt_ids, params=params)
    except LlamitaError as e:  # reported, not raised: the memory numbers above still hold
        result["generate_error"] = f"{type(e).__name__}: {e}"
        out = None
    gen_seconds = time.perf_counter() - gen_start
    end = proc_status()
    stats = llm.last_stats
    result.update(
        {
            "prompt_tokens": len(prompt_ids),
            "generated_tokens": stats.generated_tokens,
            "kv_cache_len": kv_len,
            "kv_cache_bytes": kv_per_position * kv_len,
            "kv_cache_bytes_at_ctx": kv_per_position * ctx,
            "ctx": ctx,
            "prefill_tokens_per_second": round(stats.prefill_tokens_per_second, 3),
            "tokens_per_second": round(stats.decode_tokens_per_second, 3),
            "generate_seconds": round(gen_seconds, 2),
            "text": out.text if out is not None else None,
            "rss_after_generate": end["VmRSS"],
            "peak_rss": end["VmHWM"],
            "peak_rss_anon_end": end["RssAnon"],
        }
    )
    limit = _LIMIT_FACTOR * int(result["file_bytes"]) + int(result["kv_cache_bytes_at_ctx"])
    result["limit_bytes"] = int(limit)
    result["meets_limit_after_load"] = int(result["rss_load_delta"]) <= _LIMIT_FACTOR * int(result["file_bytes"])
    result["meets_limit_after_generate"] = end["VmRSS"] - before["VmRSS"] <= _LIMIT_FACTOR * int(
        result["file_bytes"]
    ) + int(result["kv_cache_bytes"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Resident memory after loading a GGUF model vs its file size (goal: <= 1.3 x "
        "file + KV cache), peak memory, and greedy decode tokens/s. Runs in a fresh "
        "child process; prints JSON (bytes, seconds, tokens/s)."
    )
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the embedded default model)")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (bfloat16 on CPUs with fast bf16: compact int4/int8 weights), "
        "bfloat16, float16 or float32 (default auto)",
    )
    parser.add_argument("--tokens", type=int, default=16, help="tokens to generate (default 16)")
    parser.add_argument(
        "--ctx", type=int, default=2048, help="context length the KV-cache budget is computed for (default 2048)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice, one per core). On a "
        "machine other jobs keep busy, 1 can be much faster",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.ctx < 1:
        parser.error("--tokens and --ctx must be positive")

    if args.child:
        json.dump(measure(args.model, args.dtype, args.tokens, args.ctx, args.threads), sys.stdout)
        return 0

    if args.model is None:
        from llamita.engine.loader import default_model_path

        args.model = default_model_path()
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--model",
        str(args.model),
        "--dtype",
        args.dtype,
        "--tokens",
        str(args.tokens),
        "--ctx",
        str(args.ctx),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        print(f"measurement failed (exit {proc.returncode})", file=sys.stderr)
        return proc.returncode
    json.dump(json.loads(proc.stdout), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
