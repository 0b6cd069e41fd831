"""`pull` against a hub on loopback: each name form, then a generation from what came down;
resume, checksum, gated, disk space and non-llama refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamita import LLM
from llamita.cli.main import app
from llamita.errors import DownloadError, ModelFileError, UnsupportedModelError
from llamita.library import catalog
from llamita.library.catalog import CatalogEntry
from llamita.library.local import local_models
from llamita.library.pull import pull
from llamita.library.store import hf_cache_dir, read_manifests
from llamita.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=6)


def answer(model: str | Path) -> list[int]:
    return LLM(model, dtype="float32", device="cpu").generate("the cat", GREEDY).token_ids


def cache_files(pattern: str = "*") -> list[Path]:
    return sorted(p for p in hf_cache_dir().rglob(pattern) if p.is_file())


def test_pull_a_repository_with_a_tag_then_generate(hub, models):
    found = pull("hf.co/test/tiny-GGUF:q8_0")  # the tag matches case-insensitively
    assert found.name == "hf.co/test/tiny-GGUF:Q8_0"
    assert found.path.name == "tiny-Q8_0.gguf" and found.size_bytes == models["q8"].stat().st_size
    assert answer("hf.co/test/tiny-GGUF:Q8_0") == answer(models["q8"])
    # Only that file came down: not the other quantization, not the README.
    assert [p.name for p in cache_files("*.gguf")] == ["tiny-Q8_0.gguf"]
    assert hub.bytes_sent("test/tiny-GGUF", "tiny-Q4_K_M.gguf") == 0


def test_without_a_tag_q4_k_m_is_chosen_and_user_repo_works_too(hub, models):
    found = pull("test/tiny-GGUF")
    assert found.name == "hf.co/test/tiny-GGUF:Q4_K_M"
    assert answer("test/tiny-GGUF") == answer(models["q4"])
    assert answer("hf.co/test/tiny-GGUF:Q4_K_M") == answer(models["q4"])


def test_without_a_tag_and_no_default_the_choices_are_listed(hub):
    with pytest.raises(ModelFileError, match="pick one with :QUANT, one of F16, Q8_0"):
        pull("test/two-GGUF")
    with pytest.raises(ModelFileError, match="has no Q2_K file; it has: F16, Q8_0"):
        pull("test/two-GGUF:Q2_K")


def test_a_split_gguf_comes_whole_and_loads_as_one(hub, models):
    found = pull("hf.co/test/split-GGUF:Q4_K_M")
    assert found.path.name == "big-Q4_K_M-00001-of-00003.gguf"
    assert len(cache_files("big-Q4_K_M-*.gguf")) == 3
    assert answer(found.name) == answer(models["split"])


def test_a_safetensors_repository_brings_only_what_the_folder_needs(hub, models):
    found = pull("test/tiny-hf")
    assert found.name == "hf.co/test/tiny-hf" and found.path.is_dir()
    names = {p.name for p in found.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "LICENSE"} <= names
    assert not {"README.md", "original"} & names
    assert hub.bytes_sent("test/tiny-hf", "original/consolidated.00.pth") == 0
    assert answer("test/tiny-hf") == answer(models["hf"])


def test_run_with_a_short_name_pulls_first_then_answers(hub, models, monkeypatch):
    entry = CatalogEntry("llama3.2:1b", "test/tiny-GGUF", "Q4_K_M", "tiny-Q4_K_M.gguf", 1, 1)
    monkeypatch.setitem(catalog.SHORT_NAMES, "llama3.2:1b", entry)
    result = CliRunner().invoke(
        app, ["run", "llama3.2:1b", "the cat", "--raw", "-n", "4", "--temperature", "0", "--dtype", "float32"]
    )
    assert result.exit_code == 0, result.output
    assert "pulling" in result.output
    assert [m.name for m in read_manifests()] == ["llama3.2:1b"]
    again = CliRunner().invoke(app, ["run", "llama3.2:1b", "the cat", "--raw", "-n", "4"])
    assert again.exit_code == 0 and "pulling" not in again.output
    assert hub.bytes_sent("test/tiny-GGUF", "tiny-Q4_K_M.gguf") == models["q4"].stat().st_size


def test_a_missing_path_is_not_pulled(hub):
    result = CliRunner().invoke(app, ["run", "missing/model.gguf", "hi"])
    assert result.exit_code == 1 and "model file not found" in result.output
    assert not hub.served


def test_a_dropped_connection_resumes_without_fetching_bytes_again(hub, models, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)  # small chunks: a real partial
    hub.repos["test/tiny-GGUF"].drop_once.add("tiny-Q4_K_M.gguf")
    pull("test/tiny-GGUF:Q4_K_M")
    size = models["q4"].stat().st_size
    served = hub.served[("test/tiny-GGUF", "tiny-Q4_K_M.gguf")]
    assert len(served) == 2 and served[1].start > 0
    assert sum(s.sent for s in served) - served[0].sent + served[1].start == size
    assert served[1].start >= served[0].sent - 4096  # at most the chunk in flight was lost
    assert answer("test/tiny-GGUF") == answer(models["q4"])


def test_an_interrupted_pull_resumes_in_the_next_one(hub, models, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)

    class StopHalfWay:  # Ctrl-C half way through the file
        def __init__(self, *, total: int, initial: int = 0, **_: object) -> None:
            self.total, self.done = total, initial

        def update(self, n: int) -> None:
            self.done += n
            if self.done > self.total // 2:
                raise KeyboardInterrupt

        def __enter__(self):
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    with pytest.raises(KeyboardInterrupt):
        pull("test/tiny-GGUF:Q4_K_M", tqdm_class=StopHalfWay)
    partial = cache_files("*.incomplete")
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < models["q4"].stat().st_size
    kept = partial[0].stat().st_size
    assert not read_manifests()
    pull("test/tiny-GGUF:Q4_K_M")
    second = hub.served[("test/tiny-GGUF", "tiny-Q4_K_M.gguf")][-1]
    assert second.start == kept and second.sent == models["q4"].stat().st_size - kept
    assert not cache_files("*.incomplete")
    assert answer("test/tiny-GGUF") == answer(models["q4"])


def test_a_wrong_sha256_is_refused_and_nothing_is_left(hub):
    with pytest.raises(DownloadError, match="does not match its SHA-256"):
        pull("test/bad-GGUF")
    assert not cache_files("*.gguf") and not cache_files("*.incomplete")
    assert not [b for b in cache_files() if "/blobs/" in b.as_posix()]
    assert not read_manifests() and "hf.co/test/bad-GGUF:Q4_K_M" not in {m.name for m in local_models()}


def test_a_gated_repository_says_to_set_hf_token(hub, models, monkeypatch):
    with pytest.raises(DownloadError, match="accept its license at https://huggingface.co/test/gated-GGUF.*HF_TOKEN"):
        pull("test/gated-GGUF")
    result = CliRunner().invoke(app, ["pull", "test/gated-GGUF"])
    assert result.exit_code == 1 and "HF_TOKEN" in result.output
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert answer(pull("test/gated-GGUF").name) == answer(models["q4"])


def test_an_unknown_repository_suggests_a_token(hub):
    with pytest.raises(DownloadError, match="not found on .*set HF_TOKEN"):
        pull("test/nothing-here")


def test_a_full_disk_says_how_much_is_missing_before_downloading(hub, models, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    need = models["q4"].stat().st_size
    with pytest.raises(
        DownloadError,
        match=rf"needs {need / 1e6:.1f} MB .* 0\.0 MB is free; free "
        rf"{(need - 1000) / 1e6:.1f} MB more",
    ):
        pull("test/tiny-GGUF")
    assert not hub.served


def test_a_gguf_that_is_not_llama_is_refused_before_use(hub):
    with pytest.raises(UnsupportedModelError, match="'qwen2' model, not a Llama"):
        pull("test/qwen-GGUF")
    assert not cache_files("*.gguf") and not cache_files("*.incomplete")
    assert not [b for b in cache_files() if "/blobs/" in b.as_posix()]
    assert not read_manifests()


def test_a_safetensors_repository_that_is_not_llama_is_refused_before_its_weights(hub, models):
    import json

    files = {p.name: p.read_bytes() for p in models["hf"].iterdir()}
    config = json.loads(files["config.json"])
    files["config.json"] = json.dumps(dict(config, model_type="mistral", architectures=["MistralForCausalLM"])).encode()
    hub.add("test/mistral", files)
    with pytest.raises(UnsupportedModelError, match="'mistral' model"):
        pull("test/mistral")
    assert hub.bytes_sent("test/mistral", "model.safetensors") == 0
    assert not cache_files() or all(
        "/.locks/" in p.as_posix() or p.name == "CACHEDIR.TAG" or "/refs/" in p.as_posix() for p in cache_files()
    )
    assert not read_manifests()
