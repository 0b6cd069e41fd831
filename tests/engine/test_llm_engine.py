"""The continuous-batching engine against independent paths: greedy tokens from full-sequence
forward passes without a cache (one prompt at a time), and itself without prefix caching."""

from __future__ import annotations

import pytest
import torch

from llamita import SamplingParams
from llamita.engine import llm_engine
from llamita.engine.llm_engine import LLMEngine
from llamita.errors import ContextOverflowError, InvalidParameterError
from llamita.model import paged_kv_cache

from greedy_reference import greedy_tokens

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a land far away,",
    "def fib(n):",
    "El perro que persiguió al gato cruzó la calle y",
    "1, 2, 3, 4,",
]


@pytest.fixture(scope="module")
def prompt_ids(llm_f32) -> list[list[int]]:
    return [llm_f32.encode_prompt(p) for p in PROMPTS]


@pytest.fixture(scope="module")
def alone(llm_f32, prompt_ids) -> list[list[int]]:
    """Each prompt's greedy tokens, each step a whole-sequence forward pass without a cache."""
    return [
        greedy_tokens(llm_f32.loaded.model, ids, GREEDY.max_tokens, llm_f32.engine.vocab_size) for ids in prompt_ids
    ]


def run(
    engine: LLMEngine,
    requests: dict[str, tuple[list[int], SamplingParams]],
    add_at: dict[str, int] | None = None,
    max_steps: int = 2000,
) -> dict[str, list[int]]:
    """Drive the engine until every request is done; `add_at[id]` = step at which to add it."""
    add_at = add_at or {}
    got: dict[str, list[int]] = {rid: [] for rid in requests}
    finished: set[str] = set()
    for step in range(max_steps):
        for rid, (ids, params) in requests.items():
            if add_at.get(rid, 0) == step:
                engine.add_request(rid, ids, params)
        if len(finished) == len(requests):
            break
        for out in engine.step():
            got[out.request_id] += out.token_ids
            if out.finished:
                finished.add(out.request_id)
    assert len(finished) == len(requests), "requests did not finish"
    return got


def test_concurrent_equals_one_at_a_time(llm_f32, prompt_ids, alone):
    engine = LLMEngine(llm_f32.loaded)
    got = run(engine, {str(i): (ids, GREEDY) for i, ids in enumerate(prompt_ids)})
    assert [got[str(i)] for i in range(len(PROMPTS))] == alone
    assert engine.blocks.n_free == engine.blocks.n_blocks  # everything released


def test_requests_joining_mid_stream(llm_f32, prompt_ids, alone):
    """New requests enter a running batch between steps (continuous batching)."""
    engine = LLMEngine(llm_f32.loaded)
    got = run(
        engine,
        {str(i): (ids, GREEDY) for i, ids in enumerate(prompt_ids)},
        add_at={str(i): 3 * i for i in range(len(PROMPTS))},
    )
    assert [got[str(i)] for i in range(len(PROMPTS))] == alone


def test_chunked_prefill_equals_whole(llm_f32, prompt_ids, alone):
    engine = LLMEngine(llm_f32.loaded, max_prefill_tokens=3)
    got = run(engine, {str(i): (ids, GREEDY) for i, ids in enumerate(prompt_ids)})
    assert [got[str(i)] for i in range(len(PROMPTS))] == alone


def test_preempted_requests_resume_exactly(llm_f32, prompt_ids, alone):
    """A KV cache too small for all of them at once forces preemptions; outputs are unchanged."""
    engine = LLMEngine(llm_f32.loaded, kv_cache_tokens=64, block_size=4)
    got = run(engine, {str(i): (ids, GREEDY) for i, ids in enumerate(prompt_ids)})
    assert engine.scheduler.preemptions > 0
    assert [got[str(i)] for i in range(len(PROMPTS))] == alone


def test_preempted_seeded_sampling_resumes_exactly(llm_f32, prompt_ids):
    """A sampled (seeded) request gives the same tokens alone, in a batch, and preempted."""
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11, max_tokens=16, ignore_eos=True)
    reference = llm_f32.generate(prompt_token_ids=prompt_ids[1], params=params).token_ids
    others = {str(i): (ids, GREEDY) for i, ids in enumerate(prompt_ids) if i != 1}
    for kw in ({}, {"kv_cache_tokens": 48, "block_size": 4}):
        engine = LLMEngine(llm_f32.loaded, **kw)
        got = run(engine, {"sampled": (prompt_ids[1], params), **others})
        assert got["sampled"] == reference, kw


def test_prefix_cache_hits_give_the_same_logits(llm_f32):
    """A second request sharing a long system prompt reuses its blocks, and its logits equal
    those of an engine without prefix caching: to float32's rounding with a float32 cache; a
    float16 cache (a float32 model's on the CPU) rounds keys that differ in float32's last bits
    (the prefix's matmuls ran over another number of rows) to neighbouring halves now and then,
    ~4e-3 of the logits here."""
    system = llm_f32.encode_prompt("You are a helpful assistant who answers briefly. " * 6)
    a, b = system + llm_f32.encode_prompt(" Question one:"), system + llm_f32.encode_prompt(" Tell me more:")
    params = GREEDY.replace(max_tokens=4)
    logits: dict[tuple[bool, str], list[torch.Tensor]] = {}
    for caching in (True, False):
        engine = LLMEngine(llm_f32.loaded, prefix_caching=caching, block_size=8)
        engine.on_logits = lambda rid, row, c=caching: logits.setdefault((c, rid), []).append(row.clone())
        run(engine, {"a": (a, params)})
        run(engine, {"b": (b, params)})
        if caching:
            assert engine.blocks.stats.hit_tokens >= len(system) - 8
        else:
            assert engine.blocks.stats.hit_tokens == 0
    atol = 2e-2 if engine.cache_dtype == torch.float16 else 1e-4
    for rid in ("a", "b"):
        for cached, plain in zip(logits[(True, rid)], logits[(False, rid)], strict=True):
            torch.testing.assert_close(cached, plain, rtol=1e-5, atol=atol)


def test_logprobs_match_an_uncached_forward(llm_f32, prompt_ids):
    ids = prompt_ids[0]
    engine = LLMEngine(llm_f32.loaded)
    # A float16 cache (a float32 model's on the CPU) rounds the keys and values: up to ~2e-3 here.
    tolerance = 5e-3 if engine.cache_dtype == torch.float16 else 1e-4
    engine.add_request("x", ids, GREEDY.replace(max_tokens=3, logprobs=5))
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    tokens = [o.token_ids[0] for o in outs]
    with torch.inference_mode():
        full = llm_f32.loaded.model(torch.tensor([ids + tokens]))[0]  # no cache at all
    for i, out in enumerate(outs):
        ref = torch.log_softmax(full[len(ids) - 1 + i, : llm_f32.tokenizer.vocab_size], dim=-1)
        (lp,) = out.logprobs
        assert lp.token_id == int(ref.argmax())  # greedy picked the top token
        assert abs(lp.logprob - float(ref[lp.token_id])) < tolerance
        assert [t for t, _ in lp.top] == ref.topk(5).indices.tolist()
        assert all(abs(v - float(ref[t])) < tolerance for t, v in lp.top)


def test_abort_frees_blocks_and_others_continue(llm_f32, prompt_ids, alone):
    engine = LLMEngine(llm_f32.loaded)
    engine.add_request("gone", prompt_ids[0], GREEDY.replace(max_tokens=200))
    engine.add_request("kept", prompt_ids[1], GREEDY)
    got: list[int] = []
    for _ in range(3):
        got += [t for out in engine.step() if out.request_id == "kept" for t in out.token_ids]
    assert engine.abort("gone") and not engine.abort("gone")
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id == "kept"
            got += out.token_ids
    assert got == alone[1]
    assert engine.blocks.n_free == engine.blocks.n_blocks


def test_bad_requests_are_refused_and_queue_nothing(llm_f32):
    engine = LLMEngine(llm_f32.loaded, kv_cache_tokens=64, block_size=4)
    assert engine.context_length == 64  # the window is the smaller of model and cache
    with pytest.raises(ContextOverflowError, match="too many"):
        engine.add_request("long", [1] * 64, GREEDY)
    with pytest.raises(InvalidParameterError):
        engine.add_request("bad", [10**7], GREEDY)
    engine.add_request("ok", [1, 2, 3], GREEDY.replace(max_tokens=100))
    with pytest.raises(InvalidParameterError, match="already"):
        engine.add_request("ok", [1, 2, 3], GREEDY)
    assert engine.num_waiting == 1
    n = 0
    while engine.has_unfinished():
        n += sum(len(o.token_ids) for o in engine.step())
    assert n == 64 - 3  # max_tokens is cut to what the window holds
    with pytest.raises(InvalidParameterError, match="too small"):
        LLMEngine(llm_f32.loaded, kv_cache_tokens=8, block_size=16)


def test_a_stop_token_has_no_logprob_entry(llm_f32, prompt_ids, alone):
    """Outputs carry one log-probability per new token: the step that samples a stop token
    adds neither."""
    stop = alone[0][2]
    engine = LLMEngine(llm_f32.loaded)
    engine.add_request(
        "x", prompt_ids[0], SamplingParams(temperature=0, max_tokens=12, logprobs=1, stop_token_ids=(stop,))
    )
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert outs[-1].finish_reason == "stop" and outs[-1].token_ids == []
    assert all(len(o.logprobs) == len(o.token_ids) for o in outs)
    assert [t for o in outs for t in o.token_ids] == alone[0][:2]


def test_bfloat16_decode_reads_attention_in_place_and_batched_equals_alone(default_model_path, monkeypatch):
    """A bfloat16 cache (the default where AVX-512 BF16 exists) decodes through the in-place
    paged attention operator (model/paged_kv_cache.py attend); each row's answer is the one it
    gets alone, as with the float32 path above."""
    from llamita import LLM
    from llamita.model.paged_kv_cache import PagedKVCache

    llm = LLM(default_model_path, dtype="bfloat16", device="cpu")
    calls: list[int] = []
    real_attend = PagedKVCache.attend

    def attend(self, *args, **kwargs):
        out = real_attend(self, *args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(PagedKVCache, "attend", attend)
    ids = [llm.encode_prompt(p) for p in PROMPTS]
    each = [run(LLMEngine(llm.loaded), {"a": (one, GREEDY)})["a"] for one in ids]
    engine = LLMEngine(llm.loaded)
    got = run(engine, {str(i): (one, GREEDY) for i, one in enumerate(ids)})
    assert [got[str(i)] for i in range(len(PROMPTS))] == each
    if native_level_loads():
        assert calls and all(calls)  # every decode step's attention ran in place
    assert engine.blocks.n_free == engine.blocks.n_blocks


def native_level_loads() -> bool:
    from llamita.kernels import native

    return native.kernel_level() is not None


def test_a_float16_cache_stays_close_to_a_float32_one(llm_f32, prompt_ids, monkeypatch):
    """A float32 model's cache is float16 on the CPU (paged_kv_cache.cache_dtype), as llama.cpp
    keeps its own: against a float32 cache, the same greedy tokens and next-token
    distributions within a KL divergence of 1e-4 nats at every step (measured: ~1e-6)."""
    if paged_kv_cache.cache_dtype(torch.float32, "cpu") != torch.float16:
        pytest.skip("no float16 cache here (llamita's attention operator does not load)")
    params = GREEDY.replace(max_tokens=24)
    rows: dict[torch.dtype, list[torch.Tensor]] = {}
    tokens = {}
    for dtype in (torch.float16, torch.float32):
        monkeypatch.setattr(llm_engine, "cache_dtype", lambda model_dtype, device, d=dtype: d)
        engine = LLMEngine(llm_f32.loaded, compile=False)
        assert engine.cache.k[0].dtype == dtype
        engine.on_logits = lambda rid, row, d=dtype: rows.setdefault(d, []).append(row.clone())
        tokens[dtype] = run(engine, {"x": (prompt_ids[0], params)})["x"]
    assert tokens[torch.float16] == tokens[torch.float32]
    for half, full in zip(rows[torch.float16], rows[torch.float32], strict=True):
        p = torch.log_softmax(full.double(), -1)
        kl = float((p.exp() * (p - torch.log_softmax(half.double(), -1))).sum())
        assert kl < 1e-4
