"""Write a random GGUF model of Llama-3.1-8B shape, for memory and speed benchmarks.

The file has the tensors, shapes and per-tensor types `llama-quantize` gives a real
Llama-3.1-8B of the chosen `--type` (the mix rules of `llamita.weights.quant_mix`; norms and
`rope_freqs` F32), llama3 RoPE scaling as the `rope_freqs` tensor, and the tokenizer of the
embedded default model (49,152 tokens; the embedding and output keep 128,256 rows). Only the
weights are random, so it loads and runs like the real model but its text is garbage.

Quantizing 8B floats would take hours here, so valid blocks are written directly: random code
bytes (and random sub-block scales for the K-quants), then fp16 super-scales drawn so that the
dequantized weights have std about 1/sqrt(in_features), like a trained layer, and mean about 0.
Each type's std at unit scale is measured once with `llamita.weights.quants.dequantize`, and a
sample of rows of every tensor is dequantized again to check it is finite and of that scale.
Tensors stream through `gguf.GGUFWriter` one at a time: peak memory is one tensor (the
largest, `output.weight` in Q6_K, is 431 MB).

    python benchmarks/random_llama.py /work/scratch/models/rand-8b-Q4_K_M.gguf
    python benchmarks/random_llama.py OUT.gguf --type Q8_0 --layers 2   # same width, 2 blocks

Prints JSON: path, type, file_bytes, params, seconds, tensor type counts, sample checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llamita.config import PRESETS, RopeScaling
from llamita.engine.loader import default_model_path
from llamita.weights.checkpoint import llama3_rope_divisors
from llamita.weights.gguf_reader import GGUFFile
from llamita.weights.gguf_writer import QUANTIZATION_VERSION, atomic_gguf_writer
from llamita.weights.quant_mix import FILE_TYPES, ModelShape, file_type, tensor_type
from llamita.weights.quants import BLOCK_SIZES, GGMLType, dequantize, tensor_nbytes

_CHUNK_BYTES = 32 << 20  # random bytes generated per step: bounds temporaries to ~100 MB
_SAMPLE_WEIGHTS = 1 << 20  # weights per tensor dequantized again to check scale and finiteness
_TOKEN_TYPE_UNUSED = 5  # GGUF token type of padding tokens


@dataclass(frozen=True)
class LlamaShape:
    """Llama-3.1-8B hyperparameters (the defaults); only n_layers is meant to change."""

    n_layers: int = 32
    dim: int = 4096
    ffn_dim: int = 14336
    n_heads: int = 32
    n_kv_heads: int = 8
    head_dim: int = 128
    n_rows_vocab: int = 128256  # rows of token_embd and output
    context_length: int = 131072
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    # llama3 RoPE scaling (Llama-3.1 config.json `rope_scaling`).
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(GGUF name, torch-order shape) in the order llama.cpp's converter writes them."""
        kv = self.n_kv_heads * self.head_dim
        out: list[tuple[str, tuple[int, ...]]] = [
            ("rope_freqs.weight", (self.head_dim // 2,)),
            ("token_embd.weight", (self.n_rows_vocab, self.dim)),
        ]
        for i in range(self.n_layers):
            p = f"blk.{i}."
            out += [
                (p + "attn_norm.weight", (self.dim,)),
                (p + "attn_q.weight", (self.n_heads * self.head_dim, self.dim)),
                (p + "attn_k.weight", (kv, self.dim)),
                (p + "attn_v.weight", (kv, self.dim)),
                (p + "attn_output.weight", (self.dim, self.n_heads * self.head_dim)),
                (p + "ffn_norm.weight", (self.dim,)),
                (p + "ffn_gate.weight", (self.ffn_dim, self.dim)),
                (p + "ffn_up.weight", (self.ffn_dim, self.dim)),
                (p + "ffn_down.weight", (self.dim, self.ffn_dim)),
            ]
        out += [("output_norm.weight", (self.dim,)), ("output.weight", (self.n_rows_vocab, self.dim))]
        return out

    def rope_freqs(self) -> np.ndarray:
        """llama3 per-pair RoPE divisors, as convert_hf_to_gguf.py writes `rope_freqs` (float32)."""
        cfg = dataclasses.replace(
            PRESETS["llama-3.1-8b"],
            head_dim=self.head_dim,
            rope_theta=self.rope_theta,
            rope_scaling=RopeScaling(
                "llama3",
                self.rope_factor,
                self.rope_low_freq_factor,
                self.rope_high_freq_factor,
                self.rope_original_context,
            ),
        )
        return llama3_rope_divisors(cfg)


@dataclass(frozen=True)
class BlockLayout:
    """Where a block type keeps its fp16 scales; every other byte may be random.

    d: offset of the fp16 scale. dmin: offset of the fp16 K-quant minimum scale
    (W = d*sc*q - dmin*m, sc and m random sub-block codes from the same range). min_value:
    offset of the fp16 additive minimum of Q4_1/Q5_1 (W = d*q + m). mean_code: the mean of a
    random code q, which dmin or m cancel so that weights are centred on 0.
    """

    d: int
    dmin: int | None = None
    min_value: int | None = None
    mean_code: float = 0.0


LAYOUTS: dict[GGMLType, BlockLayout] = {
    GGMLType.Q8_0: BlockLayout(0),
    GGMLType.Q4_0: BlockLayout(0),
    GGMLType.Q4_1: BlockLayout(0, min_value=2, mean_code=7.5),
    GGMLType.Q5_0: BlockLayout(0),
    GGMLType.Q5_1: BlockLayout(0, min_value=2, mean_code=15.5),
    GGMLType.Q2_K: BlockLayout(80, dmin=82, mean_code=1.5),
    GGMLType.Q3_K: BlockLayout(108),
    GGMLType.Q4_K: BlockLayout(0, dmin=2, mean_code=7.5),
    GGMLType.Q5_K: BlockLayout(0, dmin=2, mean_code=15.5),
    GGMLType.Q6_K: BlockLayout(208),
}
_FLOAT_NUMPY = {GGMLType.F32: np.float32, GGMLType.F16: np.float16}


def _fp16_bytes(x: np.ndarray) -> np.ndarray:
    """float32 (n,) -> (n, 2) uint8 little-endian fp16; refuses NaN/inf (they would poison the model)."""
    h = x.astype(np.float16)
    if not np.isfinite(h).all():
        raise AssertionError("a generated fp16 scale is not finite")
    return h.view(np.uint8).reshape(-1, 2)


def fill_blocks(blocks: np.ndarray, t: GGMLType, base: float, rng: np.random.Generator) -> None:
    """Overwrite blocks (n, bytes per block) uint8 with valid random `t` blocks of scale `base`."""
    n, nbytes = blocks.shape
    raw = rng.bit_generator.random_raw(-(-n * nbytes // 8)).view(np.uint8)[: n * nbytes]
    blocks[:] = raw.reshape(n, nbytes)
    lay = LAYOUTS[t]
    d = (base * rng.uniform(0.5, 1.5, n)).astype(np.float32)
    blocks[:, lay.d : lay.d + 2] = _fp16_bytes(d)
    if lay.dmin is not None:
        blocks[:, lay.dmin : lay.dmin + 2] = _fp16_bytes(d * np.float32(lay.mean_code))
    if lay.min_value is not None:
        blocks[:, lay.min_value : lay.min_value + 2] = _fp16_bytes(-d * np.float32(lay.mean_code))


_UNIT_STD: dict[GGMLType, float] = {}


def unit_std(t: GGMLType) -> float:
    """Std of the weights `fill_blocks` makes at base 1, measured through llamita's dequantize."""
    if t not in _UNIT_STD:
        block, nbytes = BLOCK_SIZES[t]
        blocks = np.empty((max(1, (1 << 18) // block), nbytes), dtype=np.uint8)
        fill_blocks(blocks, t, 1.0, np.random.default_rng(12345))
        w = dequantize(torch.from_numpy(blocks.reshape(-1)), t, (blocks.shape[0] * block,))
        _UNIT_STD[t] = float(w.std())
    return _UNIT_STD[t]


def target_std(shape: tuple[int, ...]) -> float:
    """A trained layer's weight scale: about 1/sqrt(fan-in)."""
    return 1.0 / math.sqrt(shape[-1])


def random_tensor(
    name: str, shape: tuple[int, ...], t: GGMLType, llama: LlamaShape, rng: np.random.Generator
) -> np.ndarray:
    """The tensor's file bytes (uint8, 1-D), generated a chunk at a time."""
    n = math.prod(shape)
    if name == "rope_freqs.weight":
        return llama.rope_freqs().view(np.uint8)
    if len(shape) == 1:  # RMSNorm weights: about 1, like trained ones
        w = (1.0 + 0.05 * rng.standard_normal(n)).astype(np.float32)
        return w.astype(_FLOAT_NUMPY.get(t, np.float32)).view(np.uint8)
    out = np.empty(tensor_nbytes(t, n), dtype=np.uint8)
    block, nbytes = BLOCK_SIZES[t]
    if t in LAYOUTS:
        blocks = out.reshape(-1, nbytes)
        base = target_std(shape) / unit_std(t)
        step = max(1, _CHUNK_BYTES // nbytes)
        for start in range(0, blocks.shape[0], step):
            fill_blocks(blocks[start : start + step], t, base, rng)
        return out
    if t in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        flat = out.view(np.float32 if t == GGMLType.F32 else np.uint16)
        step = max(1, _CHUNK_BYTES // 4)
        for start in range(0, n, step):
            w = rng.standard_normal(min(step, n - start), dtype=np.float32) * target_std(shape)
            if t == GGMLType.F32:
                flat[start : start + len(w)] = w
            elif t == GGMLType.F16:
                flat[start : start + len(w)] = w.astype(np.float16).view(np.uint16)
            else:  # bfloat16: the top half of float32, truncated (random data, no rounding needed)
                flat[start : start + len(w)] = (w.view(np.uint32) >> 16).astype(np.uint16)
        return out
    raise SystemExit(f"{name}: no random generator for type {t.name}")


def check_sample(data: np.ndarray, shape: tuple[int, int], t: GGMLType) -> float:
    """Dequantize the first rows of a matrix; return std / target std (raises if not finite)."""
    rows = max(1, min(shape[0], _SAMPLE_WEIGHTS // shape[1]))
    w = dequantize(torch.from_numpy(data[: tensor_nbytes(t, rows * shape[1])]), t, (rows, shape[1]))
    if not torch.isfinite(w).all():
        raise AssertionError(f"{t.name} sample dequantizes to non-finite values")
    return float(w.std()) / target_std(shape)


def tokenizer_metadata(path: Path) -> list[tuple[str, object, int, int | None]]:
    """(key, value, GGUF value type, array element type) of every tokenizer.* key in `path`."""
    src = GGUFFile(path)
    try:
        return [(k, v, *src.metadata_types[k]) for k, v in src.metadata.items() if k.startswith("tokenizer.")]
    finally:
        src.close()


def pad_vocab(
    meta: list[tuple[str, object, int, int | None]], n_rows: int
) -> list[tuple[str, object, int, int | None]]:
    """Pad the token list to `n_rows` with unused "[PADi]" tokens, as llama.cpp's converter does
    for a model whose embedding has more rows than its tokenizer (llama.cpp wants them equal)."""
    out = []
    for key, value, vtype, element in meta:
        if key == "tokenizer.ggml.tokens":
            value = list(value) + [f"[PAD{i}]" for i in range(len(value), n_rows)]
        elif key == "tokenizer.ggml.token_type":
            value = list(value) + [_TOKEN_TYPE_UNUSED] * (n_rows - len(value))
        out.append((key, value, vtype, element))
    return out


def write_model(
    output: Path, ft_name: str, llama: LlamaShape, tokenizer_from: Path, seed: int = 0, pad: bool = False
) -> dict[str, object]:
    import gguf  # the reference writer llama.cpp's converters use

    ft = file_type(ft_name)
    rng = np.random.default_rng(seed)
    shape = ModelShape(llama.n_layers, llama.n_heads, llama.n_kv_heads, tied_embeddings=False)
    plans = [(name, dims, tensor_type(name, dims, ft, shape, GGMLType.F32)) for name, dims in llama.tensors()]
    tok_meta = tokenizer_metadata(tokenizer_from)
    if pad:
        tok_meta = pad_vocab(tok_meta, llama.n_rows_vocab)
    n_tokens = next(len(v) for k, v, *_ in tok_meta if k == "tokenizer.ggml.tokens")

    start = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    ratios: dict[str, list[float]] = {}
    with atomic_gguf_writer(output, "llama") as writer:
        writer.add_name(f"random Llama-3.1-8B shape, {llama.n_layers} layers, {ft.name}")
        writer.add_uint32("general.file_type", ft.file_type)
        writer.add_uint32("general.quantization_version", QUANTIZATION_VERSION)
        writer.add_block_count(llama.n_layers)
        writer.add_context_length(llama.context_length)
        writer.add_embedding_length(llama.dim)
        writer.add_feed_forward_length(llama.ffn_dim)
        writer.add_head_count(llama.n_heads)
        writer.add_head_count_kv(llama.n_kv_heads)
        writer.add_key_length(llama.head_dim)
        writer.add_value_length(llama.head_dim)
        writer.add_rope_dimension_count(llama.head_dim)
        writer.add_rope_freq_base(llama.rope_theta)
        writer.add_layer_norm_rms_eps(llama.norm_eps)
        writer.add_vocab_size(llama.n_rows_vocab)  # embedding rows; the token list may be shorter
        for key, value, vtype, element in tok_meta:
            sub = gguf.GGUFValueType(element) if element is not None else None
            writer.add_key_value(key, value, gguf.GGUFValueType(vtype), sub_type=sub)
        for name, dims, t in plans:
            writer.add_tensor_info(
                name,
                dims,
                np.dtype(np.float32),
                tensor_nbytes(t, math.prod(dims)),
                raw_dtype=gguf.GGMLQuantizationType(int(t)),
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, dims, t in plans:
            data = random_tensor(name, dims, t, llama, rng)
            if len(dims) == 2:
                ratio = check_sample(data, dims, t)
                if not 0.5 < ratio < 2.0:
                    raise AssertionError(f"{name}: sample std is {ratio:.2f} x 1/sqrt(in_features)")
                ratios.setdefault(t.name, []).append(ratio)
            writer.write_tensor_data(data)
            del data
    seconds = time.perf_counter() - start

    counts = Counter(t.name for _, _, t in plans)
    tensor_bytes = Counter()
    for _, dims, t in plans:
        tensor_bytes[t.name] += tensor_nbytes(t, math.prod(dims))
    params = sum(math.prod(d) for _, d, _ in plans)
    return {
        "path": str(output),
        "type": ft.name,
        "file_bytes": output.stat().st_size,
        "params": params,
        "bits_per_weight": round(8 * sum(tensor_bytes.values()) / params, 3),
        "seconds": round(seconds, 1),
        "n_layers": llama.n_layers,
        "tensor_type_counts": dict(counts),
        "tensor_type_bytes": dict(tensor_bytes),
        "tokens": n_tokens,
        "embedding_rows": llama.n_rows_vocab,
        "tokenizer_from": str(tokenizer_from),
        "sample_std_over_target": {k: [round(min(v), 3), round(max(v), 3)] for k, v in ratios.items()},
    }


def check_with_gguf(path: Path, llama: LlamaShape, expected: dict[str, object]) -> dict[str, object]:
    """Open the file with the `gguf` package's reader and compare names, shapes and types."""
    import gguf

    reader = gguf.GGUFReader(path)
    types = Counter(gguf.GGMLQuantizationType(int(t.tensor_type)).name for t in reader.tensors)
    shapes_ok = all(
        tuple(int(x) for x in reversed(t.shape)) == dims for t, (_, dims) in zip(reader.tensors, llama.tensors())
    )
    return {
        "gguf_reader_tensors": len(reader.tensors),
        "gguf_reader_ok": shapes_ok and dict(types) == expected["tensor_type_counts"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a random GGUF model of Llama-3.1-8B shape (32 layers, dim 4096, ffn "
        "14336, 32 heads / 8 KV heads, vocab rows 128256, llama3 RoPE) with the "
        "tensor types llama-quantize picks. Prints JSON; sizes in bytes, time in "
        "seconds."
    )
    parser.add_argument("output", type=Path, help="the .gguf file to write (keep it out of the repo)")
    parser.add_argument("--type", default="Q4_K_M", help=f"file type: {', '.join(FILE_TYPES)} (default Q4_K_M)")
    parser.add_argument(
        "--layers",
        type=int,
        default=32,
        help="transformer blocks (default 32; fewer gives a small model of the same width)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--tokenizer-from",
        type=Path,
        default=None,
        help="GGUF file whose tokenizer.* metadata is copied (default: the embedded default model, 49,152 tokens)",
    )
    parser.add_argument(
        "--pad-vocab",
        action="store_true",
        help="pad the token list with unused [PADi] tokens to the 128,256 "
        "embedding rows (llama.cpp refuses fewer tokens than rows)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip re-opening the file with gguf.GGUFReader")
    args = parser.parse_args(argv)
    if args.layers < 1:
        parser.error("--layers must be at least 1")
    llama = LlamaShape(n_layers=args.layers)
    report = write_model(
        args.output, args.type, llama, args.tokenizer_from or default_model_path(), seed=args.seed, pad=args.pad_vocab
    )
    if not args.no_check:
        report.update(check_with_gguf(args.output, llama, report))
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
