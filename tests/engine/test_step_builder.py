"""The compiled decode step by default (engine/step_builder.py): a run with no package answers
eagerly and starts one background builder, whose package the next LLM (and the same LLM's next
generation) uses; the build lock stops a second builder; a failed build is said once and not
retried; a damaged package is rebuilt, never used; --no-compile and LLAMITA_COMPILE=0 stay
eager. One real background build of a tiny float32 model (~20-30 s on 2 cores); the rest runs
the builder in-process or replaces the process start."""

from __future__ import annotations

import logging

import pytest

from llamita import LLM, SamplingParams
from llamita.cli.main import app
from llamita.engine import step_builder
from llamita.engine.llm_engine import DEFAULT_BLOCK_SIZE
from llamita.engine.step_builder import StepSource, build_in_background, compile_mode
from llamita.errors import InvalidParameterError
from llamita.model.compiled import CompiledDecoder, build_in_progress, build_lock, read_failure
from llamita.model.compiled_paged import PagedCompiledDecoder

from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
PROMPT_IDS = [1, 40, 41, 42, 43]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    cfg = tiny_hf_config()
    return write_gguf(tmp_path_factory.mktemp("builder") / "tiny.gguf", cfg, random_hf_weights(cfg))


@pytest.fixture
def compiled_dir(tmp_path, monkeypatch):
    """Packages go to a fresh folder, and LLMs compile by default (conftest turns it off)."""
    monkeypatch.setenv("LLAMITA_COMPILED_DIR", str(tmp_path))
    monkeypatch.delenv("LLAMITA_COMPILE", raising=False)
    return tmp_path


@pytest.fixture
def no_spawn(monkeypatch):
    """Record builder processes instead of starting them."""
    started: list[tuple] = []
    monkeypatch.setattr(step_builder, "_spawn", lambda *args: started.append(args))
    return started


def package_of(llm: LLM, batch: int = 1):
    """The package an LLM decodes one row through: the engine's paged step."""
    return PagedCompiledDecoder(llm.loaded.model, DEFAULT_BLOCK_SIZE, build=False).package_path(batch)


def test_compile_mode_from_flag_and_environment(monkeypatch):
    monkeypatch.delenv("LLAMITA_COMPILE", raising=False)
    assert compile_mode(None) == "background"
    assert (compile_mode(True), compile_mode(False)) == ("foreground", "off")
    for value, mode in [("0", "off"), ("1", "foreground"), ("auto", "background"), ("", "background")]:
        monkeypatch.setenv("LLAMITA_COMPILE", value)
        assert compile_mode(None) == mode
    assert compile_mode(True) == "foreground"  # a flag overrides the environment
    monkeypatch.setenv("LLAMITA_COMPILE", "fast")
    with pytest.raises(InvalidParameterError, match="LLAMITA_COMPILE"):
        compile_mode(None)


def test_first_llm_answers_eagerly_while_a_builder_makes_the_package_the_next_one_uses(tiny_gguf, compiled_dir):
    first = LLM(tiny_gguf, dtype="float32", device="cpu")
    assert first.builder is None  # started by the first generation (or a status line), not by loading
    assert first.decode_path == "eager (compiled step building in the background)"
    assert first.builder is not None
    eager = first.generate(prompt_token_ids=PROMPT_IDS, params=GREEDY).token_ids  # answered meanwhile
    assert first.builder.wait(timeout=600) == 0, (compiled_dir / package_of(first).with_suffix(".log").name).read_text()
    assert [p.name for p in compiled_dir.glob("*.pt2")] == [package_of(first).name]
    # The same LLM picks the finished package up at its next generation...
    assert first.decode_path == "compiled step"
    # ...and a later LLM uses it at once, starting no builder; greedy tokens equal eager's.
    later = LLM(tiny_gguf, dtype="float32", device="cpu")
    assert later.decode_path == "compiled step" and later.builder is None
    assert later.generate(prompt_token_ids=PROMPT_IDS, params=GREEDY).token_ids == eager
    assert first.generate(prompt_token_ids=PROMPT_IDS, params=GREEDY).token_ids == eager


def test_the_build_lock_stops_a_second_builder(tiny_gguf, compiled_dir, no_spawn):
    llm = LLM(tiny_gguf, dtype="float32", device="cpu", compile=False)
    decoder = CompiledDecoder(llm.loaded.model, build=False)
    package = decoder.package_path(1)
    with build_lock(package, wait=False) as held:  # as a running builder holds it
        assert held and build_in_progress(package)
        source = StepSource.of(llm.loaded)
        assert build_in_background(decoder, source) == ("building", None)
        assert step_builder.build(source, [(1, package)]) == ["locked"]
    assert no_spawn == [] and not package.exists() and read_failure(package) is None
    assert not build_in_progress(package)


def test_a_failed_build_is_said_once_and_not_retried(tiny_gguf, compiled_dir, no_spawn, caplog):
    llm = LLM(tiny_gguf, dtype="float32", device="cpu", compile=False)
    package = package_of(llm)
    # A builder that cannot load its model records why instead of raising.
    gone = StepSource(compiled_dir / "gone.gguf", "float32", compact=False)
    assert step_builder.build(gone, [(1, package)]) == ["failed"]
    assert "gone.gguf" in str(read_failure(package)["error"])
    with caplog.at_level(logging.WARNING, logger="llamita.engine.step_builder"):
        first = LLM(tiny_gguf, dtype="float32", device="cpu")
        first.generate(prompt_token_ids=PROMPT_IDS, params=GREEDY)
    said = [r for r in caplog.records if "could not be built" in r.getMessage()]
    assert len(said) == 1 and "gone.gguf" in said[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llamita.engine.step_builder"):
        second = LLM(tiny_gguf, dtype="float32", device="cpu")
        second.generate(prompt_token_ids=PROMPT_IDS, params=GREEDY)
    assert "could not be built" not in caplog.text
    assert no_spawn == []  # not retried
    for llm in (first, second):
        assert llm.decode_path.startswith("eager (the compiled step failed to build")
    want = llm.generate(prompt_token_ids=PROMPT_IDS, params=GREEDY).token_ids
    assert second.generate(prompt_token_ids=PROMPT_IDS, params=GREEDY).token_ids == want


def test_a_damaged_package_is_rebuilt_not_used(tiny_gguf, compiled_dir, no_spawn):
    llm = LLM(tiny_gguf, dtype="float32", device="cpu", compile=False)
    package_of(llm).write_bytes(b"PK\x03\x04 half a package")
    again = LLM(tiny_gguf, dtype="float32", device="cpu")
    assert again.decode_path == "eager (compiled step building in the background)"
    assert [wanted for _, wanted in no_spawn] == [[(1, package_of(llm))]]


@pytest.mark.parametrize("how", [["--no-compile"], ["env"]])
def test_no_compile_and_llamita_compile_0_decode_eagerly(tiny_gguf, compiled_dir, no_spawn, how, monkeypatch):
    from typer.testing import CliRunner

    args = ["run", "hi", "--model", str(tiny_gguf), "-n", "2", "--dtype", "float32"]
    if how == ["env"]:
        monkeypatch.setenv("LLAMITA_COMPILE", "0")
    else:
        args += how
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "· eager decode ·" in result.stderr
    assert no_spawn == [] and list(compiled_dir.iterdir()) == []
    # Without either, the same command says it decodes eagerly while the step builds.
    monkeypatch.delenv("LLAMITA_COMPILE", raising=False)
    result = CliRunner().invoke(app, args[:8])
    assert "· eager (compiled step building in the background) decode ·" in result.stderr, result.stderr
    assert len(no_spawn) == 1
