"""Tensor parallelism: K processes on loopback (gloo) against one process, float32.

Each case spawns K ranks that load their shards through `open_model`; rank 0 runs the whole
prompt without a cache, a batch through the Python API (`LLM`) and a batch straight through the
LLMEngine, greedy. The reference is the same model loaded whole in this
process. One OpenMP thread per rank keeps the two shared cores from thrashing.

With LoRA adapters (two PEFT adapters, one slot each), the whole-prompt logits and the
`LLM` batch run through the first, and in the LLMEngine one request uses the second and the
other none, in the same batch.

The glass box and the scoring route run through rank 0 too: attention maps (every rank's heads
gathered), the logit lens (rank 0's blocks hooked, each stage projected by all ranks) and the
log-probabilities of a prompt's tokens (`echo` + `logprobs`); attention and lens with the first
adapter in the LoRA case.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import gguf
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llamita.api.llm import LLM
from llamita.config import ModelConfig
from llamita.engine.llm_engine import LLMEngine
from llamita.engine.loader import load_model
from llamita.engine.lora_attach import attach_loras
from llamita.engine.scoring import prompt_logprobs
from llamita.engine.tensor_parallel import (
    _FORWARD,
    _HIDDEN,
    ForwardInputs,
    LeaderModel,
    StepHeader,
    decode_step,
    encode_step,
    follow,
    payload_size,
)
from llamita.glass.attention import attention_weights
from llamita.glass.lens import logit_lens
from llamita.model.kv_cache import KVCache
from llamita.model.paged_kv_cache import PagedKVCache
from llamita.sampling_params import SamplingParams
from llamita.weights.shard import TensorShard

from lora_models import make_peft_adapter
from tiny_models import llama31_mini_config, random_hf_weights, tiny_hf_config, write_gguf

N_NEW = 8
PROMPTS = [[5, 9, 33, 2 + 100, 7, 61, 20, 14, 88, 3, 44], [17, 4, 71]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(loaded) -> dict[str, object]:
    """What both sides compute: full-prompt logits, LLM (both rows under one adapter) and LLMEngine
    (one adapter per row) greedy tokens."""
    greedy = SamplingParams(temperature=0, max_tokens=N_NEW, ignore_eos=True)
    names = loaded.model.lora.names
    slot = 0 if names else None
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([PROMPTS[0]]), adapters=None if slot is None else torch.tensor([slot]))[0]
        api = LLM.from_loaded(loaded, names[0] if names else None).generate(
            prompt_token_ids=PROMPTS, params=greedy
        )  # the Python API's batch: both rows under adapter `slot`
        streamed = {i: out.token_ids for i, out in enumerate(api)}
        engine = LLMEngine(loaded, kv_cache_tokens=256, block_size=16)
        for i, p in enumerate(PROMPTS):
            engine.add_request(str(i), p, greedy, adapter=names[1] if names and i == 0 else None)
        batched: dict[str, list[int]] = {"0": [], "1": []}
        while engine.has_unfinished():
            for out in engine.step():
                batched[out.request_id] += out.token_ids
    scores = prompt_logprobs(loaded.model, PROMPTS[0], loaded.tokenizer.vocab_size, top=2)
    lens = logit_lens(LLM.from_loaded(loaded, names[0] if names else None), "the cat sat on", raw=True, top=3)["layers"]
    return {
        "logits": logits,
        "generator": [streamed[0], streamed[1]],
        "engine": [batched["0"], batched["1"]],
        "attention": torch.from_numpy(
            attention_weights(loaded.model, PROMPTS[0], None if slot is None else torch.tensor([slot]))
        ),
        "lens_ids": [[t["id"] for t in stage["top"]] for stage in lens],
        "lens_probs": torch.tensor([[t["prob"] for t in stage["top"]] for stage in lens]),
        "score_ids": [s.top for s in scores[1:]],
        "score_logprobs": torch.tensor([s.logprob for s in scores[1:]]),
    }


def _rank(rank: int, world: int, port: int, cases: list[tuple[str, str, str, list[str]]], out: str) -> None:
    """One rank: load each case's shard (and its part of the case's adapters), then lead
    (rank 0) or follow its steps."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for name, path, dtype, loras in cases:
            loaded = load_model(path, dtype=dtype, device="cpu", tensor_parallel=(rank, world))
            attach_loras(
                loaded.model, loaded.config, loras, combine=False, shard=TensorShard(rank, world, loaded.config)
            )
            if rank == 0:
                leader = LeaderModel(loaded.model)
                result = _run(replace(loaded, model=leader))
                leader.shutdown()
                torch.save(result, Path(out) / f"{name}.pt")
            else:
                follow(loaded.model)
    finally:
        dist.destroy_process_group()


def _reference(path: Path, dtype: str, loras: list[str]) -> dict[str, object]:
    loaded = load_model(path, dtype=dtype, device="cpu")
    attach_loras(loaded.model, loaded.config, loras, combine=False)
    return _run(loaded)


TINY = {
    # GQA 2:1, untied head; F32 and Q8_0 (32-weight blocks: every split lands on one).
    "untied-f32": (tiny_hf_config(num_key_value_heads=2), gguf.GGMLQuantizationType.F32),
    "untied-q8_0": (tiny_hf_config(num_key_value_heads=2), gguf.GGMLQuantizationType.Q8_0),
    # Llama 3.2's shape: tied embeddings, 8 heads over 2 KV heads.
    "tied-q4_0": (llama31_mini_config(tied=True), gguf.GGMLQuantizationType.Q4_0),
}


# Heads and FFN columns that split unevenly over 2 ranks (2 + 1 KV heads, 50 + 49 columns),
# so each rank's slice of the adapters' A and B is cut at different offsets.
LORA_BASE = tiny_hf_config(hidden_size=96, num_attention_heads=6, num_key_value_heads=3, intermediate_size=99)


@pytest.fixture(scope="module")
def cases(tmp_path_factory, default_model_path) -> dict[str, tuple[Path, str, list[str]]]:
    root = tmp_path_factory.mktemp("tp")
    found = {
        name: (write_gguf(root / f"{name}.gguf", cfg, random_hf_weights(cfg, seed=3), qtype), "float32", [])
        for name, (cfg, qtype) in TINY.items()
    }
    # 9 query heads over 3 KV heads: rank 0 gets 2 KV heads (6 query heads), rank 1 one.
    found["default-f32"] = (default_model_path, "float32", [])
    pytest.importorskip("peft")
    sd = random_hf_weights(LORA_BASE, seed=5)
    adapters = [
        str(make_peft_adapter(root / "every-layer", LORA_BASE, sd, seed=1)),
        str(
            make_peft_adapter(
                root / "some-layers",
                LORA_BASE,
                sd,
                seed=2,
                r=3,
                alpha=5.0,
                targets=["k_proj", "o_proj", "up_proj", "down_proj"],
            )
        ),
    ]
    found["lora-f32"] = (
        write_gguf(root / "lora.gguf", LORA_BASE, sd, gguf.GGMLQuantizationType.F32),
        "float32",
        adapters,
    )
    return found


@pytest.fixture(scope="module")
def two_ranks(cases, tmp_path_factory) -> Path:
    """Runs every case on 2 ranks (one spawn, one process group); rank 0's results, by name."""
    out = tmp_path_factory.mktemp("tp-out")
    todo = [(name, str(path), dtype, loras) for name, (path, dtype, loras) in cases.items()]
    mp.start_processes(_rank, args=(2, _free_port(), todo, str(out)), nprocs=2, start_method="spawn")
    return out


@pytest.mark.parametrize("name", [*TINY, "default-f32", "lora-f32"])
def test_two_ranks_equal_one_process(name, cases, two_ranks):
    path, dtype, loras = cases[name]
    ref = _reference(path, dtype, loras)
    got = torch.load(two_ranks / f"{name}.pt")
    rel = float((got["logits"] - ref["logits"]).abs().max() / ref["logits"].abs().max())
    assert rel < 1e-4, rel
    assert got["generator"] == ref["generator"]
    assert got["engine"] == ref["engine"]
    assert all(len(t) == N_NEW for t in ref["generator"] + ref["engine"])
    # (L, H, S, S): every head of every rank, in order.
    assert got["attention"].shape == ref["attention"].shape
    assert (got["attention"] - ref["attention"]).abs().max() < 1e-5
    assert got["lens_ids"] == ref["lens_ids"]
    assert (got["lens_probs"] - ref["lens_probs"]).abs().max() < 1e-5
    assert [[t for t, _ in top] for top in got["score_ids"]] == [[t for t, _ in top] for top in ref["score_ids"]]
    assert (got["score_logprobs"] - ref["score_logprobs"]).abs().max() < 1e-4


def test_adapters_change_the_lora_case(cases):
    """The LoRA case would pass with the adapters ignored on both sides; they are not."""
    path, dtype, loras = cases["lora-f32"]
    assert _reference(path, dtype, loras)["logits"].sub(_reference(path, dtype, [])["logits"]).abs().max() > 1e-2


def test_a_step_message_carries_every_input():
    """encode_step / decode_step without a process group: another rank gets the same tokens,
    positions, rows, LoRA slots and flags, a cache of the same geometry bound to the same block
    tables, and drops the caches rank 0 freed."""
    cfg = ModelConfig(n_layers=2, dim=32, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=100)
    tokens, positions = torch.tensor([[5, 9, 33], [4, 7, 1]]), torch.tensor([[3, 4, 5], [0, 1, 2]])
    paged = PagedKVCache(cfg, 6, 4, dtype=torch.bfloat16)
    paged.bind(torch.tensor([[2, 0], [5, 1]]))
    cpu = torch.device("cpu")
    step = ForwardInputs(tokens, positions, paged, None, True, torch.tensor([0, -1]))
    header, payload = encode_step(_HIDDEN, step, 7, [3], cpu)
    sent = StepHeader.from_tensor(header.to_tensor(cpu))
    assert sent == header and payload.numel() == payload_size(sent)
    caches: dict[int, KVCache | PagedKVCache] = {3: KVCache(cfg, 1, 8)}
    got = decode_step(sent, payload, caches, cfg)
    assert set(caches) == {7} and got.cache is caches[7] and isinstance(got.cache, PagedKVCache)
    assert (got.cache.n_blocks, got.cache.block_size, got.cache.k[0].dtype) == (6, 4, torch.bfloat16)
    assert got.cache.tables is not None and got.cache.tables.tolist() == [[2, 0], [5, 1]]
    assert got.tokens.tolist() == tokens.tolist() and got.positions.tolist() == positions.tolist()
    assert got.rows is None and got.last_only is True and got.adapters is not None
    assert got.adapters.tolist() == [0, -1]

    static = ForwardInputs(tokens[:1], positions[:1], KVCache(cfg, 3, 16), torch.tensor([2]))
    got = decode_step(*encode_step(_FORWARD, static, 8, [], cpu)[:2], caches, cfg)
    assert isinstance(got.cache, KVCache) and (got.cache.n_rows, got.cache.max_len) == (3, 16)
    assert got.rows is not None and got.rows.tolist() == [2] and got.adapters is None and got.last_only is False
