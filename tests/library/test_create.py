"""`llamita create`: a Modelfile makes a library name that points at the base's weights (never a
copy) and carries settings, and every way of taking a model by name applies them. The references
are the base model run with the same things given by hand."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
from typer.testing import CliRunner

from llamita import LLM
from llamita.cli.main import app
from llamita.engine.loader import load_model, resolve_model_path
from llamita.errors import ContextOverflowError, ModelFileError, ModelfileError
from llamita.library.create import create_model
from llamita.library.modelfile import parse_modelfile
from llamita.library.store import MANIFEST_VERSION, find_manifest, manifest_dir
from llamita.sampling_params import SamplingParams

from tiny_models import random_hf_weights, tiny_hf_config

MARIO = """# a comment, then instructions in any case
from ./tiny.gguf
PARAMETER temperature 0
PARAMETER num_predict 5
parameter stop "the end"
PARAMETER top_k 7
SYSTEM \"\"\"You are Mario
from Super Mario Bros.\"\"\"
MESSAGE user Who are you?
MESSAGE assistant It's-a me!
LICENSE MIT
"""
SYSTEM = "You are Mario\nfrom Super Mario Bros."
MESSAGES = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "It's-a me!"}]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def folder(tmp_path, models) -> Path:
    """A folder with a Modelfile and a link to the tiny GGUF next to it (FROM ./tiny.gguf)."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "tiny.gguf").symlink_to(models["q4"])
    (tmp_path / "work" / "Modelfile").write_text(MARIO)
    return tmp_path / "work"


def test_create_list_show_cp_rm(folder, models, homes, monkeypatch):
    monkeypatch.chdir(folder)
    result = invoke("create", "mario")  # -f defaults to ./Modelfile, as in Ollama
    assert result.exit_code == 0, result.output
    m = find_manifest("mario")
    assert m.version == MANIFEST_VERSION == 2 and m.created_from == "./tiny.gguf"
    assert Path(m.path) == models["q4"].resolve()  # a reference to the weights
    assert sum(p.stat().st_size for p in manifest_dir().iterdir()) < 10_000  # no weights copied

    rows = {r["name"]: r for r in json.loads(invoke("list", "--json").stdout)}
    assert rows["mario"]["created_from"] == "./tiny.gguf"
    assert "created" in CliRunner().invoke(app, ["list"], env={"COLUMNS": "160"}).stdout

    shown = json.loads(invoke("show", "mario", "--json").stdout)
    assert shown["system"] == SYSTEM and shown["messages"] == MESSAGES and shown["license"] == "MIT"
    assert shown["generation_parameters"]["top_k"] == 7 and shown["generation_parameters"]["stop"] == ["the end"]

    # show --modelfile prints a Modelfile that makes the same model again.
    text = invoke("show", "mario", "--modelfile").stdout
    assert f"FROM {models['q4'].resolve()}" in text
    again = parse_modelfile(text)
    assert again.settings == parse_modelfile(MARIO).settings
    (folder / "Again").write_text(text)
    assert invoke("create", "mario2", "-f", str(folder / "Again")).exit_code == 0
    assert find_manifest("mario2").settings == m.settings

    assert invoke("cp", "mario", "luigi").exit_code == 0
    assert find_manifest("luigi").settings == m.settings
    assert invoke("rm", "mario", "luigi", "mario2").exit_code == 0
    assert models["q4"].exists() and find_manifest("mario") is None


def test_created_settings_reach_the_llm(folder, models):
    create_model("mario", parse_modelfile(MARIO), folder)
    base = LLM(models["q4"], dtype="float32", device="cpu")
    mario = LLM("mario", dtype="float32", device="cpu")
    user = [{"role": "user", "content": "Hello"}]
    # SYSTEM, then MESSAGEs, then the conversation; a conversation's own system prompt wins.
    assert mario.encode_chat(user) == base.encode_chat([{"role": "system", "content": SYSTEM}, *MESSAGES, *user])
    own = [{"role": "system", "content": "Be brief."}, *user]
    assert mario.encode_chat(own) == base.encode_chat([own[0], *MESSAGES, *user])
    # PARAMETERs are the defaults; explicit values win.
    assert mario.sampling_params() == SamplingParams(temperature=0.0, max_tokens=5, stop=("the end",), top_k=7)
    assert mario.sampling_params(top_k=3, temperature=None).top_k == 3
    assert mario.sampling_params({"max_tokens": 512}).max_tokens == 5  # the model's over a front end's
    expected = base.chat(
        [{"role": "system", "content": SYSTEM}, *MESSAGES, *user],
        SamplingParams(temperature=0, max_tokens=5, top_k=7, stop=("the end",)),
    )
    assert mario.chat(user).token_ids == expected.token_ids
    assert load_model("mario", dtype="float32").settings.system == SYSTEM


def test_run_uses_the_parameters_and_flags_win(folder):
    create_model("mario", parse_modelfile(MARIO), folder)
    result = invoke("run", "mario", "the cat", "--raw")
    assert result.exit_code == 0, result.output
    assert "generation: 5 tokens" in result.stderr and "finish: length" in result.stderr  # num_predict 5
    result = invoke("run", "mario", "the cat", "--raw", "-n", "2")
    assert result.exit_code == 0 and "generation: 2 tokens" in result.stderr  # the flag wins


def test_a_jinja_template_replaces_the_chat_template(folder, models):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    (folder / "T").write_text(f'FROM ./tiny.gguf\nSYSTEM S\nTEMPLATE """{template}"""\n')
    create_model("templated", parse_modelfile((folder / "T").read_text()), folder)
    llm = LLM("templated", dtype="float32", device="cpu")
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    rendered = jinja2.Template(template).render(messages=messages)  # jinja2 itself, not llamita
    tok = llm.tokenizer
    assert llm.encode_chat(messages[1:]) == tok.encode(rendered, add_bos=tok.add_bos)
    assert LLM(models["q4"], dtype="float32", device="cpu").tokenizer.chat_template.source != template


def test_an_adapter_is_loaded_as_lora(folder, models):
    pytest.importorskip("peft")
    from lora_models import make_peft_adapter

    cfg = tiny_hf_config()
    adapter = make_peft_adapter(folder / "style", cfg, random_hf_weights(cfg, seed=0), seed=21)
    (folder / "L").write_text("FROM ./tiny.gguf\nADAPTER ./style\n")
    create_model("styled", parse_modelfile((folder / "L").read_text()), folder)
    assert find_manifest("styled").settings["adapters"] == [str(adapter.resolve())]
    greedy = SamplingParams(temperature=0, max_tokens=6)
    styled = LLM("styled", dtype="float32", device="cpu")
    by_hand = LLM(models["q4"], dtype="float32", device="cpu", lora=[str(adapter)])
    plain = LLM(models["q4"], dtype="float32", device="cpu")
    assert styled.adapter is not None
    assert styled.generate("the cat", greedy).token_ids == by_hand.generate("the cat", greedy).token_ids
    assert by_hand.generate("the cat", greedy).token_ids != plain.generate("the cat", greedy).token_ids


def test_from_a_created_model_layers_the_settings(folder):
    create_model("mario", parse_modelfile(MARIO), folder)
    child = parse_modelfile("FROM mario\nPARAMETER top_k 3\nSYSTEM Luigi\n")
    m = create_model("luigi", child, folder)
    assert m.settings["parameters"] == {"temperature": 0.0, "num_predict": 5, "stop": ["the end"], "top_k": 3}
    assert m.settings["system"] == "Luigi" and m.settings["messages"] == MESSAGES
    assert resolve_model_path("luigi") == resolve_model_path("mario")
    create_model("luigi", parse_modelfile("FROM mario\n"), folder)  # making a name again replaces it
    assert find_manifest("luigi").settings["system"] == SYSTEM


def test_errors(folder, models):
    with pytest.raises(ModelfileError, match="no model file or folder") as e:
        create_model("x", parse_modelfile("# first\nFROM ./missing.gguf\n"), folder)
    assert e.value.line == 2
    with pytest.raises(ModelFileError, match="not on this machine"):
        create_model("x", parse_modelfile("FROM nobody-has-this\n"), folder)
    with pytest.raises(ModelfileError, match="nothing at") as e:
        create_model("x", parse_modelfile("FROM ./tiny.gguf\n\nADAPTER ./nope\n"), folder)
    assert e.value.line == 3
    (folder / "bad-adapter").mkdir()
    with pytest.raises(ModelfileError, match="adapter_config.json"):
        create_model("x", parse_modelfile("FROM ./tiny.gguf\nADAPTER bad-adapter\n"), folder)
    assert invoke("cp", str(models["q8"]), "plain").exit_code == 0
    with pytest.raises(ModelFileError, match="did not make"):
        create_model("plain", parse_modelfile("FROM ./tiny.gguf\n"), folder)
    result = invoke("create", "y", "-f", str(folder / "nothing-here"))
    assert result.exit_code == 1 and "no Modelfile at" in result.output
    (folder / "Bad").write_text("FROM ./tiny.gguf\nPARAMETER temperature warm\n")
    result = invoke("create", "y", "-f", str(folder / "Bad"))
    assert result.exit_code == 1 and "line 2" in result.output and "temperature must be a number" in result.output


def test_a_version_1_manifest_still_reads(models, homes):
    folder = homes / "llamita" / "models"
    folder.mkdir(parents=True)
    (folder / "old.json").write_text(
        json.dumps(
            {  # as phase 1 wrote them
                "name": "old",
                "source": "path",
                "path": str(models["q8"]),
                "repo": None,
                "revision": None,
                "files": [],
                "size_bytes": 1,
                "quantization": None,
                "parameters": None,
                "alias_of": None,
                "created": 0.0,
                "version": 1,
            }
        )
    )
    assert find_manifest("old").settings is None and resolve_model_path("old") == models["q8"]
    assert load_model("old", dtype="float32").settings is None


def test_num_ctx_bounds_prompt_and_answer(folder, models):
    create_model("short", parse_modelfile("FROM ./tiny.gguf\nPARAMETER num_ctx 12\nPARAMETER temperature 0\n"), folder)
    llm = LLM("short", dtype="float32", device="cpu")
    assert llm.context_length == 12 < llm.config.context_length
    prompt = llm.encode_prompt("the cat")
    out = llm.generate(prompt_token_ids=prompt, params=llm.sampling_params(max_tokens=None, ignore_eos=True))
    assert len(out.token_ids) == 12 - len(prompt) and out.finish_reason == "length"
    assert len(llm.generate("the cat", llm.sampling_params(max_tokens=2, ignore_eos=True)).token_ids) == 2
    with pytest.raises(ContextOverflowError, match="num_ctx is 12"):
        llm.generate("the cat " * 12)


def test_create_pulls_a_repository_first(hub, tmp_path):
    (tmp_path / "Modelfile").write_text("FROM test/tiny-GGUF:Q8_0\nSYSTEM pulled first\n")
    result = invoke("create", "pulled", "-f", str(tmp_path / "Modelfile"))
    assert result.exit_code == 0, result.output
    assert resolve_model_path("pulled") == resolve_model_path("hf.co/test/tiny-GGUF:Q8_0")
    assert find_manifest("pulled").settings["system"] == "pulled first"
