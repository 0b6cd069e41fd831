"""The server's engine through the compiled paged decode step (model/compiled_paged.py) against
the eager paged engine and an uncached full-sequence forward pass, on a tiny float32 model: equal greedy
tokens one request at a time and three at once (rows joining, leaving, sharing prefix blocks,
so both packages run: one row, 2+ rows), and a package built meanwhile is picked up by the next
step. Two package builds (~20 s each on 2 cores), cached under ~/.cache/llamita/aoti."""

from __future__ import annotations

import shutil

import pytest
from test_llm_engine import run

from llamita import SamplingParams
from llamita.engine import step_builder
from llamita.engine.llm_engine import LLMEngine
from llamita.engine.loader import load_model
from llamita.model.compiled_paged import KEY_BLOCK, table_width

from greedy_reference import greedy_tokens
from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

SHARED = list(range(40, 60))  # 20 tokens: a full 16-token block two prompts share
PROMPTS = [[1, *SHARED, 70], [1, 90, 91], [1, *SHARED, 80, 81, 82]]
PARAMS = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (40, 12, 25)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_hf_config()
    path = write_gguf(tmp_path_factory.mktemp("paged") / "tiny.gguf", cfg, random_hf_weights(cfg))
    return load_model(path, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def compiled_engine(tiny):
    engine = LLMEngine(tiny, kv_cache_tokens=512, max_running=4, compile=True)  # builds both now
    assert engine.decode_path == "compiled step"
    return engine


@pytest.fixture(scope="module")
def alone(tiny) -> list[list[int]]:
    """Each prompt's greedy tokens from full-sequence forward passes without a cache
    (independent of the paged cache, of batching and of compilation)."""
    return [greedy_tokens(tiny.model, ids, p.max_tokens) for ids, p in zip(PROMPTS, PARAMS)]


def count_compiled_rows(engine: LLMEngine, monkeypatch) -> list[int]:
    """Rows of every compiled step `engine` takes from now on."""
    rows: list[int] = []
    original = engine.compiled._run

    def spy(batch, inputs):  # noqa: ANN001, ANN202
        rows.append(batch)
        return original(batch, inputs)

    monkeypatch.setattr(engine.compiled, "_run", spy)
    return rows


def test_table_width_covers_the_positions_attended():
    assert [table_width(p, 16) for p in (0, KEY_BLOCK - 1, KEY_BLOCK)] == [2, 2, 4]
    assert table_width(0, 64) == 1 and table_width(100, 7) * 7 >= 128


def test_compiled_paged_engine_equals_eager_one_at_a_time_and_batched(tiny, compiled_engine, alone, monkeypatch):
    rows = count_compiled_rows(compiled_engine, monkeypatch)
    eager = LLMEngine(tiny, kv_cache_tokens=512, max_running=4, compile=False)
    assert eager.decode_path == "eager" and eager.compiled is None
    for i, (ids, params) in enumerate(zip(PROMPTS, PARAMS)):
        want = run(eager, {"a": (ids, params)})["a"]
        assert want == alone[i]
        assert run(compiled_engine, {"a": (ids, params)})["a"] == want
    assert set(rows) == {1}
    rows.clear()
    requests = {str(i): (ids, p) for i, (ids, p) in enumerate(zip(PROMPTS, PARAMS))}
    # Joining at different steps: rows sit at different positions, and the batch grows and shrinks.
    got = run(compiled_engine, requests, add_at={"0": 0, "1": 2, "2": 5})
    assert [got[str(i)] for i in range(3)] == alone
    assert {1, 2, 3} <= set(rows)  # both packages ran
    assert compiled_engine.blocks.n_free == compiled_engine.blocks.n_blocks


def test_a_server_picks_up_packages_built_meanwhile(tiny, compiled_engine, alone, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMITA_COMPILED_DIR", str(tmp_path))
    monkeypatch.delenv("LLAMITA_COMPILE", raising=False)
    started: list[tuple] = []
    monkeypatch.setattr(step_builder, "_spawn", lambda *args: started.append(args))
    engine = LLMEngine(tiny, kv_cache_tokens=512, max_running=4)  # the default: build in the background
    assert engine.decode_path == "eager (compiled step building in the background)"
    assert [sorted(b for b, _ in wanted) for _, wanted in started] == [[1, 2]]
    rows = count_compiled_rows(engine, monkeypatch)
    assert run(engine, {"a": (PROMPTS[0], PARAMS[0])})["a"] == alone[0]
    assert rows == []  # eager meanwhile
    for batch in (1, 2):  # what the builder process would write
        built = compiled_engine.compiled.package_path(batch)
        shutil.copy(built, engine.compiled.package_path(batch))
    assert run(engine, {"b": (PROMPTS[1], PARAMS[1])})["b"] == alone[1]
    assert rows and set(rows) == {1}  # the next request decodes through the package
    assert engine.decode_path == "compiled step"
