"""The Modelfile parser against the facts of Ollama's own parser tests (parser/parser_test.go of
ollama/ollama: input text -> the commands Ollama's ParseFile gives), then llamita's checks."""

from __future__ import annotations

import pytest

from llamita.errors import ModelfileError
from llamita.library.modelfile import (
    check_parameter,
    format_modelfile,
    parse_commands,
    parse_modelfile,
    read_modelfile,
    settings_from_request,
)
from llamita.library.settings import ModelSettings

LLAMA3_GO = (
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
    "{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}"
    "<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"
)


def ollama_form(text: str) -> list[tuple[str, str]]:
    """Our commands written as Ollama's Command{Name, Args}: FROM is "model", a PARAMETER is its
    name, a MESSAGE is "message" with "role: content"."""
    out = []
    for c in parse_commands(text):
        if c.instruction == "FROM":
            out.append(("model", c.value))
        elif c.instruction == "PARAMETER":
            out.append((c.key, c.value))
        elif c.instruction == "MESSAGE":
            out.append(("message", f"{c.key}: {c.value}"))
        else:
            out.append((c.instruction.lower(), c.value))
    return out


def test_parse_file():  # TestParseFileFile
    text = (
        "\nFROM model1\nADAPTER adapter1\nLICENSE MIT\nPARAMETER param1 value1\nPARAMETER param2 "
        f'value2\nTEMPLATE """{LLAMA3_GO}"""    \n'
    )
    assert ollama_form(text) == [
        ("model", "model1"),
        ("adapter", "adapter1"),
        ("license", "MIT"),
        ("param1", "value1"),
        ("param2", "value2"),
        ("template", LLAMA3_GO),
    ]


def test_trim_space():  # TestParseFileTrimSpace
    text = (
        '\nFROM "     model 1"\nADAPTER      adapter3\nLICENSE "MIT       "\nPARAMETER param1        '
        f'value1\nPARAMETER param2    value2\nTEMPLATE """   {LLAMA3_GO}   """    \n'
    )
    assert ollama_form(text) == [
        ("model", "     model 1"),
        ("adapter", "adapter3"),
        ("license", "MIT       "),
        ("param1", "value1"),
        ("param2", "value2"),
        ("template", f"   {LLAMA3_GO}   "),
    ]


@pytest.mark.parametrize(
    "text,expected",
    [  # TestParseFileFrom
        ('FROM "FOO  BAR  "', [("model", "FOO  BAR  ")]),
        ('FROM "FOO BAR"\nPARAMETER param1 value1', [("model", "FOO BAR"), ("param1", "value1")]),
        ("FROM     FOOO BAR    ", [("model", "FOOO BAR")]),
        ("FROM /what/is/the path ", [("model", "/what/is/the path")]),
        ("FROM llama3:7b-instruct-q4_K_M", [("model", "llama3:7b-instruct-q4_K_M")]),
        ("PARAMETER param1 value1\nFROM foo", [("param1", "value1"), ("model", "foo")]),
        ("PARAMETER what the \nFROM lemons make lemonade ", [("what", "the"), ("model", "lemons make lemonade")]),
    ],
)
def test_from(text, expected):
    assert ollama_form(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [  # TestParseFileMessages
        (
            "\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\n",
            [("model", "foo"), ("message", "system: You are a file parser. Always parse things.")],
        ),
        (
            "\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\nMESSAGE user Hey there!\n"
            "MESSAGE assistant Hello, I want to parse all the things!\n",
            [
                ("model", "foo"),
                ("message", "system: You are a file parser. Always parse things."),
                ("message", "user: Hey there!"),
                ("message", "assistant: Hello, I want to parse all the things!"),
            ],
        ),
        (
            '\nFROM foo\nMESSAGE system """\nYou are a multiline file parser. Always parse things.\n"""\n\t\t\t',
            [("model", "foo"), ("message", "system: \nYou are a multiline file parser. Always parse things.\n")],
        ),
    ],
)
def test_messages(text, expected):
    assert ollama_form(text) == expected


@pytest.mark.parametrize(
    "text,value",
    [  # TestParseFileQuoted
        ('SYSTEM """\nThis is a\nmultiline system.\n"""\n\t\t\t', "\nThis is a\nmultiline system.\n"),
        ('SYSTEM """\nThis is a\nmultiline system."""\n\t\t\t', "\nThis is a\nmultiline system."),
        ('SYSTEM """This is a\nmultiline system."""\n', "This is a\nmultiline system."),
        ('SYSTEM """This is a multiline system."""\n', "This is a multiline system."),
        (
            'SYSTEM """\nThis is a multiline system with "quotes".\n"""\n',
            '\nThis is a multiline system with "quotes".\n',
        ),
        ('SYSTEM """"""\n', ""),
        ('SYSTEM ""\n', ""),
        ('SYSTEM "\'"\n', "'"),
        ('SYSTEM """\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""\n', "''\"'\"\"'\"\"'\"'''''\"\"'\"\"'"),
        ('TEMPLATE """\n{{ .Prompt }}\n"""', "\n{{ .Prompt }}\n"),
    ],
)
def test_quoted(text, value):
    assert ollama_form("FROM foo\n" + text)[1][1] == value


@pytest.mark.parametrize("text", ['SYSTEM """This is a multiline system.""\n\t\t\t', 'SYSTEM "\n\t\t\t'])
def test_unclosed_quotes(text):  # TestParseFileQuoted: io.ErrUnexpectedEOF
    with pytest.raises(ModelfileError, match="never closed") as e:
        parse_commands("FROM foo\n" + text)
    assert e.value.line == 2


@pytest.mark.parametrize(
    "line,name,value",
    [  # TestParseFileParameters
        ("num_ctx 1", "num_ctx", "1"),
        ("seed 1", "seed", "1"),
        ("top_p 1.0", "top_p", "1.0"),
        ("min_p 0.05", "min_p", "0.05"),
        ("stop ### User:", "stop", "### User:"),
        ("stop ### User: ", "stop", "### User:"),
        ('stop "### User:"', "stop", "### User:"),
        ('stop "### User: "', "stop", "### User: "),
        ('stop """### User:"""', "stop", "### User:"),
        ('stop """### User:\n"""', "stop", "### User:\n"),
        ("stop <|eot_id|>", "stop", "<|eot_id|>"),
        ("penalize_newline true", "penalize_newline", "true"),
    ],
)
def test_parameters(line, name, value):
    assert ollama_form(f"FROM foo\nPARAMETER {line}\n") == [("model", "foo"), (name, value)]


def test_comments_and_case():  # TestParseFileComments; instructions are case-insensitive (docs)
    assert ollama_form("\n# comment\nFROM foo\n\t") == [("model", "foo")]
    assert ollama_form("from foo\nSystem hi # not a comment\n") == [("model", "foo"), ("system", "hi # not a comment")]


def test_utf16_file(tmp_path):  # TestParseFileUTF16ParseFile
    text = "FROM bob\nPARAMETER param1 1\nPARAMETER param2 4096\nSYSTEM You are a utf16 file.\n"
    for encoding in ("utf-16-le", "utf-16-be"):
        path = tmp_path / encoding
        path.write_bytes(("\ufeff" + text).encode(encoding))
        assert ollama_form(read_modelfile(path)) == [
            ("model", "bob"),
            ("param1", "1"),
            ("param2", "4096"),
            ("system", "You are a utf16 file."),
        ]


@pytest.mark.parametrize(
    "text,line,words",
    [
        ("\nFROM foo\nBADCOMMAND param1 value1\n", 3, "unknown instruction 'BADCOMMAND'"),  # TestParseFileBadCommand
        ("\nFROM foo\nMESSAGE badguy I'm a bad guy!\n", 3, "got 'badguy'"),
        ("\nFROM foo\nMESSAGE system\n", 3, "MESSAGE system needs a value"),
        ("\nFROM foo\nPARAMETER param1\n", 3, "PARAMETER param1 needs a value"),  # ...MissingValue
        ("FROM foo\nDRAFT ./small\n", 2, "DRAFT"),
    ],
)
def test_syntax_errors_name_the_line(text, line, words):
    with pytest.raises(ModelfileError, match=words) as e:
        parse_commands(text)
    assert e.value.line == line and f"line {line}" in str(e.value)


@pytest.mark.parametrize("text", ["", "PARAMETER temperature 1"])
def test_missing_from(text):
    with pytest.raises(ModelfileError, match="no FROM"):
        parse_modelfile(text)


def test_parse_modelfile_settings():
    mf = parse_modelfile(
        'FROM llama3.2:1b\nPARAMETER temperature 1\nPARAMETER stop "<|start_header_id|>"\n'
        "PARAMETER STOP <|eot_id|>\nPARAMETER num_ctx 4096\nSYSTEM You are Mario.\n"
        "MESSAGE user Is Toronto in Canada?\nMESSAGE assistant yes\nADAPTER ./lora.gguf\n"
        "LICENSE MIT\nLICENSE Apache-2.0\nPARAMETER num_gpu 0\n"
    )
    assert mf.from_ == "llama3.2:1b"
    s = mf.settings
    assert s.parameters == {
        "temperature": 1.0,
        "stop": ("<|start_header_id|>", "<|eot_id|>"),
        "num_ctx": 4096,
        "num_gpu": 0,
    }
    assert s.system == "You are Mario." and s.adapters == ("./lora.gguf",)
    assert s.messages == ({"role": "user", "content": "Is Toronto in Canada?"}, {"role": "assistant", "content": "yes"})
    assert s.license == ("MIT", "Apache-2.0")
    assert s.sampling_kwargs() == {"temperature": 1.0, "stop": ("<|start_header_id|>", "<|eot_id|>")}
    assert s.num_ctx == 4096
    assert isinstance(s.parameters["temperature"], float)


@pytest.mark.parametrize(
    "line,words",
    [
        ("PARAMETER temprature 0.5", "unknown parameter 'temprature'"),
        ("PARAMETER temperature hot", "temperature must be a number, got 'hot'"),
        ("PARAMETER top_k 4.5", "top_k must be an integer"),
        ("PARAMETER temperature -1", "bad value for temperature"),
        ("PARAMETER top_p 0", "bad value for top_p"),
        ("PARAMETER num_predict 0", "bad value for num_predict"),
        ("PARAMETER mirostat 2", "cannot honour mirostat 2"),
        ("PARAMETER typical_p 0.7", "cannot honour typical_p"),
        ("PARAMETER mirostat_tau 5.0", "cannot honour the parameter 'mirostat_tau'"),
        ("PARAMETER use_mmap maybe", "use_mmap must be true or false"),
        ("PARAMETER num_ctx 0", "num_ctx must be >= 1"),
        ("TEMPLATE " + '"""' + LLAMA3_GO + '"""', "Go template"),
        ('TEMPLATE "{% for m in messages %}"', "not valid Jinja"),
        ("FROM other", "second FROM"),
    ],
)
def test_bad_values_name_the_line(line, words):
    with pytest.raises(ModelfileError, match=words) as e:
        parse_modelfile(f"FROM foo\n# a comment\n{line}\n")
    assert e.value.line == 3


def test_honoured_values():
    assert check_parameter("num_predict", "-1") == -1  # Ollama's "no limit"
    assert check_parameter("typical_p", "1.0") == 1.0  # the off value is accepted
    assert check_parameter("seed", 42) == 42 and check_parameter("temperature", 0) == 0.0  # JSON values
    assert check_parameter("use_mmap", "F") is False  # Go's ParseBool spellings


def test_layering_child_wins():
    base = ModelSettings(
        {"temperature": 0.2, "top_k": 10},
        "base system",
        None,
        ({"role": "user", "content": "hi"},),
        ("/a.gguf",),
        ("MIT",),
    )
    child = ModelSettings({"temperature": 0.9}, None, "{{ x }}", (), ("/b.gguf",))
    merged = child.layered_over(base)
    assert merged.parameters == {"temperature": 0.9, "top_k": 10}
    assert merged.system == "base system" and merged.template == "{{ x }}"
    assert merged.messages == base.messages and merged.adapters == ("/a.gguf", "/b.gguf")
    assert merged.license == ("MIT",)


def test_conversation_order():  # Ollama: system, the Modelfile's messages, then the request's
    s = ModelSettings(system="S", messages=({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}))
    chat = [{"role": "user", "content": "hello"}]
    assert s.conversation(chat) == [{"role": "system", "content": "S"}, *s.messages, *chat]
    own = [{"role": "system", "content": "mine"}, *chat]
    assert s.conversation(own) == [own[0], *s.messages, *chat]  # the conversation's system wins


def test_format_round_trip():  # TestParseFileFormatParseFile: parse(format(x)) == x
    text = (
        'FROM foo\nADAPTER adapter1\nLICENSE """\nVery long and boring legal text.\nBlah blah blah.\n'
        '"Oh look, a quote!"\n"""\n\nPARAMETER temperature 0.1\nPARAMETER stop "### User: "\n'
        'PARAMETER stop </s>\nSYSTEM ""\nMESSAGE system """\nYou are a store greeter. Always respond '
        'with "Hello!".\n"""\nMESSAGE user Hey there!\nMESSAGE assistant "  padded  "\n'
    )
    mf = parse_modelfile(text)
    again = parse_modelfile(format_modelfile(mf.from_, mf.settings, comment="made by a test"))
    assert again.from_ == "foo" and again.settings == mf.settings


def test_request_fields_follow_the_same_rules():
    s = settings_from_request(
        {
            "parameters": {"temperature": 0.3, "stop": ["a", "b"]},
            "system": "S",
            "messages": [{"role": "user", "content": "x"}],
            "license": "MIT",
        }
    )
    assert s.parameters == {"temperature": 0.3, "stop": ("a", "b")} and s.license == ("MIT",)
    with pytest.raises(ModelfileError, match="unknown parameter 'foo'") as e:
        settings_from_request({"parameters": {"foo": 1}})
    assert e.value.line is None and str(e.value).startswith("Modelfile: ")
    with pytest.raises(ModelfileError, match="role"):
        settings_from_request({"messages": [{"role": "tool", "content": "x"}]})
