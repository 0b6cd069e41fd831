"""Tensor parallelism: K processes on loopback (gloo) against one process, float32.

Each case spawns K ranks that load their shards through `open_model`; rank 0 runs the whole
prompt without a cache, a batch through the Generator (static KV cache) and a batch through
the LLMEngine (paged KV cache), greedy. The reference is the same model loaded whole in this
process. One OpenMP thread per rank keeps the two shared cores from thrashing.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import gguf
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llamita.engine.generator import Generator
from llamita.engine.llm_engine import LLMEngine
from llamita.engine.loader import load_model
from llamita.engine.tensor_parallel import LeaderModel, follow
from llamita.sampling_params import SamplingParams
from tiny_models import llama31_mini_config, random_hf_weights, tiny_hf_config, write_gguf

N_NEW = 8
PROMPTS = [[5, 9, 33, 2 + 100, 7, 61, 20, 14, 88, 3, 44], [17, 4, 71]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(loaded) -> dict[str, object]:
    """What both sides compute: full-prompt logits, Generator and LLMEngine greedy tokens."""
    greedy = SamplingParams(temperature=0, max_tokens=N_NEW, ignore_eos=True)
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([PROMPTS[0]]))[0]
        generator = Generator(loaded.model, loaded.tokenizer)
        streamed: dict[int, list[int]] = {0: [], 1: []}
        for out in generator.stream(PROMPTS, [greedy, greedy]):
            if out.token_id is not None:
                streamed[out.index].append(out.token_id)
        engine = LLMEngine(loaded, kv_cache_tokens=256, block_size=16)
        for i, p in enumerate(PROMPTS):
            engine.add_request(str(i), p, greedy)
        batched: dict[str, list[int]] = {"0": [], "1": []}
        while engine.has_unfinished():
            for out in engine.step():
                batched[out.request_id] += out.token_ids
    return {"logits": logits, "generator": [streamed[0], streamed[1]],
            "engine": [batched["0"], batched["1"]]}


def _rank(rank: int, world: int, port: int, cases: list[tuple[str, str, str]], out: str) -> None:
    """One rank: load each case's shard, then lead (rank 0) or follow its steps."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for name, path, dtype in cases:
            loaded = load_model(path, dtype=dtype, device="cpu", tensor_parallel=(rank, world))
            if rank == 0:
                leader = LeaderModel(loaded.model)
                result = _run(replace(loaded, model=leader))
                leader.shutdown()
                torch.save(result, Path(out) / f"{name}.pt")
            else:
                follow(loaded.model)
    finally:
        dist.destroy_process_group()


def _reference(path: Path, dtype: str) -> dict[str, object]:
    return _run(load_model(path, dtype=dtype, device="cpu"))


TINY = {
    # GQA 2:1, untied head; F32 and Q8_0 (32-weight blocks: every split lands on one).
    "untied-f32": (tiny_hf_config(num_key_value_heads=2), gguf.GGMLQuantizationType.F32),
    "untied-q8_0": (tiny_hf_config(num_key_value_heads=2), gguf.GGMLQuantizationType.Q8_0),
    # Llama 3.2's shape: tied embeddings, 8 heads over 2 KV heads.
    "tied-q4_0": (llama31_mini_config(tied=True), gguf.GGMLQuantizationType.Q4_0),
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory, default_model_path) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("tp")
    found = {name: (write_gguf(root / f"{name}.gguf", cfg, random_hf_weights(cfg, seed=3), qtype), "float32")
             for name, (cfg, qtype) in TINY.items()}
    # 9 query heads over 3 KV heads: rank 0 gets 2 KV heads (6 query heads), rank 1 one.
    found["default-f32"] = (default_model_path, "float32")
    return found


@pytest.fixture(scope="module")
def two_ranks(cases, tmp_path_factory) -> Path:
    """Runs every case on 2 ranks (one spawn, one process group); rank 0's results, by name."""
    out = tmp_path_factory.mktemp("tp-out")
    todo = [(name, str(path), dtype) for name, (path, dtype) in cases.items()]
    mp.start_processes(_rank, args=(2, _free_port(), todo, str(out)), nprocs=2, start_method="spawn")
    return out


@pytest.mark.parametrize("name", [*TINY, "default-f32"])
def test_two_ranks_equal_one_process(name, cases, two_ranks):
    path, dtype = cases[name]
    ref = _reference(path, dtype)
    got = torch.load(two_ranks / f"{name}.pt")
    rel = float((got["logits"] - ref["logits"]).abs().max() / ref["logits"].abs().max())
    assert rel < 1e-4, rel
    assert got["generator"] == ref["generator"]
    assert got["engine"] == ref["engine"]
    assert all(len(t) == N_NEW for t in ref["generator"] + ref["engine"])
