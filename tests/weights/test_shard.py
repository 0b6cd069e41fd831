"""Tensor-parallel shard loading: each rank's slice, read from the file, equals the same slice
of the whole tensor read whole (GGUF in float and quantized types, HF safetensors, Meta
model-parallel shards), and a rank holds about 1/K of the weights."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import torch

from llamita.config import ModelConfig
from llamita.engine.loader import load_model
from llamita.errors import InvalidParameterError
from llamita.jobs.quantize import quantize_model
from llamita.weights.checkpoint import read_checkpoint
from llamita.weights.shard import TensorShard, split_range

from tiny_models import hf_llama, llama31_mini_config, random_hf_weights, write_gguf, write_hf_folder, write_meta_folder

pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def test_split_range_covers_everything_once():
    for n in (1, 7, 9, 1536, 49152):
        for k in range(1, min(n, 8) + 1):
            ranges = [split_range(n, k, r) for r in range(k)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            sizes = [b - a for a, b in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_kv_heads_are_never_split():
    cfg = ModelConfig(n_layers=1, dim=576, n_heads=9, n_kv_heads=3, ffn_dim=1536, vocab_size=100)
    ranks = [TensorShard(r, 2, cfg) for r in range(2)]
    assert [s.kv_heads for s in ranks] == [(0, 2), (2, 3)]
    assert [s.heads for s in ranks] == [(0, 6), (6, 9)]  # each KV head with its 3 query heads
    with pytest.raises(InvalidParameterError, match="only 3 KV heads.*1, 3"):
        TensorShard(0, 4, cfg)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    cfg = llama31_mini_config(tied=False)  # 8 heads over 2 KV heads, FFN 896
    sd = random_hf_weights(cfg, seed=5)
    hf = hf_llama(cfg, sd)
    found = {
        "hf": write_hf_folder(root / "hf", cfg, hf),
        "hf-sharded": write_hf_folder(root / "hf-sharded", cfg, hf, max_shard_size="300KB"),
        "meta-1": write_meta_folder(root / "meta1", cfg, sd),
        "meta-2": write_meta_folder(root / "meta2", cfg, sd, n_shards=2),  # one shard per rank
        "meta-4": write_meta_folder(root / "meta4", cfg, sd, n_shards=4),  # two per rank
        "meta-2-embedding-dim1": write_meta_folder(root / "meta2c", cfg, sd, n_shards=2, embedding_split=1),
        "gguf-q8_0": write_gguf(root / "q8.gguf", cfg, sd, gguf.GGMLQuantizationType.Q8_0),
    }
    # Q4_K's 256-weight blocks: rank 0's o_proj columns (4 heads x 32) and down_proj columns
    # (384 of 768) cut through blocks, so they take the decode-then-slice path.
    cfg768 = dict(cfg, intermediate_size=768)
    folder = write_hf_folder(root / "hf768", cfg768, hf_llama(cfg768, random_hf_weights(cfg768, seed=6)))
    quantize_model(folder, root / "q4k.gguf", "Q4_K_M")
    found["gguf-q4_k_m"] = root / "q4k.gguf"
    return found


@pytest.mark.parametrize(
    "fmt", ["hf", "hf-sharded", "meta-1", "meta-2", "meta-4", "meta-2-embedding-dim1", "gguf-q8_0", "gguf-q4_k_m"]
)
@pytest.mark.parametrize("world", [2])
def test_each_rank_reads_exactly_its_slice(checkpoints, fmt, world):
    whole = read_checkpoint(checkpoints[fmt], dtype=torch.float32)
    for rank in range(world):
        part = read_checkpoint(checkpoints[fmt], dtype=torch.float32, tp_rank=rank, tp_size=world)
        assert part.shard is not None and part.config == whole.config
        assert part.state.keys() == whole.state.keys()
        for name, t in whole.state.items():
            assert torch.equal(part.state[name], part.shard.narrow(name, t)), name


def test_a_rank_holds_about_half_the_weights(default_model_path):
    """The default model, compact (int4/int8) where this CPU runs it, else float32."""

    def weight_bytes(model: torch.nn.Module) -> int:
        tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    whole = weight_bytes(load_model(default_model_path, dtype="auto", device="cpu").model)
    ranks = [
        weight_bytes(load_model(default_model_path, dtype="auto", device="cpu", tensor_parallel=(r, 2)).model)
        for r in range(2)
    ]
    # Uneven heads (6 + 3 query heads) put a little more on rank 0; norms are replicated.
    assert all(0.4 * whole < b < 0.6 * whole for b in ranks), (whole, ranks)
    assert abs(sum(ranks) - whole) < 0.02 * whole, (whole, ranks)
