"""`LLM` runs on the server's engine (engine/llm_engine.py): one decode loop. Its greedy tokens
against whole-sequence forward passes without a cache (the slow, obviously correct statement),
eager and through the compiled paged step; logprobs against log_softmax of those logits; a
stream closed early leaves nothing in the engine; interleaved streams keep their own tokens;
the KV cache grows to what a call needs. A tiny random float32 model: seconds (the compiled
case loads the tiny packages tests/engine/test_compiled_paged.py builds, ~20 s each cold)."""

from __future__ import annotations

import pytest
import torch

from llamita import LLM, SamplingParams

from greedy_reference import greedy_tokens
from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

PROMPTS = [[1, 40, 41, 42, 43], [1, 90], [1, *range(50, 70)]]  # a 21-token prompt spans two blocks
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    cfg = tiny_hf_config()
    return write_gguf(tmp_path_factory.mktemp("llm") / "tiny.gguf", cfg, random_hf_weights(cfg))


@pytest.fixture(scope="module")
def llm(tiny_path) -> LLM:
    return LLM(tiny_path, dtype="float32", device="cpu", compile=False)


@pytest.fixture(scope="module")
def reference(llm) -> list[list[int]]:
    return [greedy_tokens(llm.loaded.model, ids, GREEDY.max_tokens) for ids in PROMPTS]


def test_greedy_equals_uncached_full_forward_one_at_a_time_and_batched(llm, reference):
    assert [llm.generate(prompt_token_ids=ids, params=GREEDY).token_ids for ids in PROMPTS] == reference
    assert [o.token_ids for o in llm.generate(prompt_token_ids=PROMPTS, params=GREEDY)] == reference
    # Again: the prompts' full blocks now come from the prefix cache.
    assert [o.token_ids for o in llm.generate(prompt_token_ids=PROMPTS, params=GREEDY)] == reference
    assert llm.last_stats.cached_tokens == 16
    assert llm.engine.requests == {}


def test_compiled_step_equals_uncached_full_forward(tiny_path, reference):
    compiled = LLM(tiny_path, dtype="float32", device="cpu", compile=True)
    assert compiled.decode_path == "compiled step"
    rows: list[int] = []
    run = compiled.engine.compiled._run

    def spy(batch, inputs):  # noqa: ANN001, ANN202
        rows.append(batch)
        return run(batch, inputs)

    compiled.engine.compiled._run = spy
    assert compiled.generate(prompt_token_ids=PROMPTS[0], params=GREEDY).token_ids == reference[0]
    assert [o.token_ids for o in compiled.generate(prompt_token_ids=PROMPTS, params=GREEDY)] == reference
    assert 1 in rows and 3 in rows  # both packages ran: one row, then three together


def test_logprobs_are_the_raw_distribution(llm, reference):
    out = llm.generate(prompt_token_ids=PROMPTS[0], params=GREEDY.replace(logprobs=3))
    assert out.token_ids == reference[0] and len(out.logprobs) == len(out.token_ids)
    model = llm.loaded.model
    # Against a forward pass with no cache: a float16 cache (a float32 model's on the CPU,
    # paged_kv_cache.cache_dtype) rounds the keys and values, up to ~2e-3 here.
    tolerance = 5e-3 if llm.engine.cache_dtype == torch.float16 else 1e-4
    with torch.inference_mode():
        for i, lp in enumerate(out.logprobs):
            want = torch.log_softmax(model(torch.tensor([PROMPTS[0] + reference[0][:i]]))[0, -1].double(), -1)
            assert lp.token_id == reference[0][i]
            assert lp.logprob == pytest.approx(float(want[lp.token_id]), abs=tolerance)
            assert [t for t, _ in lp.top] == want.topk(3).indices.tolist()
    streamed = list(llm.generate_stream(prompt_token_ids=PROMPTS[0], params=GREEDY.replace(logprobs=0)))
    assert [c.logprobs[0].logprob for c in streamed] == pytest.approx([lp.logprob for lp in out.logprobs], abs=1e-5)


def test_stats_count_the_call(llm):
    llm.generate(prompt_token_ids=PROMPTS[1], params=GREEDY)
    s = llm.last_stats
    assert (s.prompt_tokens, s.generated_tokens, s.decode_tokens) == (2, 10, 9)  # the first token is prefill's
    assert s.prefill_seconds > 0 and s.decode_seconds > 0


def test_a_stream_closed_early_leaves_nothing_behind(llm, reference):
    stream = llm.generate_stream(prompt_token_ids=PROMPTS[2], params=GREEDY)
    assert [next(stream).token_id for _ in range(3)] == reference[2][:3]
    stream.close()
    assert llm.engine.requests == {} and llm.engine.blocks.usage == 0.0
    assert llm.generate(prompt_token_ids=PROMPTS[2], params=GREEDY).token_ids == reference[2]


def test_interleaved_streams_keep_their_own_tokens(llm, reference):
    a = llm.generate_stream(prompt_token_ids=PROMPTS[0], params=GREEDY)
    first = next(a)
    b = llm.generate_stream(prompt_token_ids=PROMPTS[1], params=GREEDY)
    got_b = [c.token_id for c in b]  # steps a's request too: its outputs wait for a
    got_a = [first.token_id] + [c.token_id for c in a]
    assert (got_a, got_b) == (reference[0], reference[1])


def test_kv_cache_grows_to_what_a_call_needs(tiny_path):
    llm = LLM(tiny_path, dtype="float32", device="cpu", compile=False)
    llm.generate(prompt_token_ids=PROMPTS[0], params=GREEDY)
    small = llm.engine.kv_cache_tokens
    assert len(PROMPTS[0]) + GREEDY.max_tokens <= small <= 4 * 16  # one block per sequence spare
    llm.generate(prompt_token_ids=PROMPTS, params=GREEDY)
    assert llm.engine.kv_cache_tokens > small
    assert llm.engine.scheduler.preemptions == 0  # sized so that no row waits or is recomputed
