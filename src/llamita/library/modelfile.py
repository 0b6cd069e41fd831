"""Ollama's Modelfile, read as Ollama's parser reads it (docs/modelfile.md, parser/parser.go of
ollama/ollama), and written back (`llamita show --modelfile`).

    # a comment
    FROM llama3.2:1b                  a library name, a path, or USER/REPO[:QUANT]
    ADAPTER ./my-lora                 a LoRA adapter: a GGUF LoRA file or a PEFT folder
    PARAMETER temperature 0.3         Ollama's option names; `stop` may repeat
    SYSTEM \"\"\"You are Mario.\"\"\"        a value runs to the end of its line, or between
    TEMPLATE "..."                    "..." or \"\"\"...\"\"\" across lines
    MESSAGE user Hi                   system, user or assistant: put before every conversation
    LICENSE MIT

Instructions are case-insensitive; a value is trimmed, then one pair of quotes around it goes.
`parse_commands` is the syntax (every line as Ollama's ParseFile gives it); `parse_modelfile`
checks what the commands say (one FROM, known parameters with values of their type, a Jinja
template); `settings_from_commands` does the same for /api/create's JSON fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamita.errors import InvalidParameterError, ModelfileError
from llamita.library.settings import MESSAGE_ROLES, ModelSettings
from llamita.sampling_params import (
    OLLAMA_HARDWARE_OPTIONS,
    OLLAMA_OFF_VALUES,
    OLLAMA_OPTIONS,
    SamplingParams,
    ollama_num_predict,
)

INSTRUCTIONS = ("FROM", "ADAPTER", "PARAMETER", "SYSTEM", "TEMPLATE", "MESSAGE", "LICENSE")
# Ollama has these too; llamita has nothing to do them with.
_OLLAMA_ONLY = {
    "DRAFT": "a draft model for speculative decoding",
    "RENDERER": "a prompt renderer",
    "PARSER": "an output parser",
    "REQUIRES": "an Ollama version requirement",
}

# Every option Ollama's `options` (api/types.go) knows, by the type its value must have.
_FLOAT = {
    "temperature",
    "top_p",
    "min_p",
    "typical_p",
    "tfs_z",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "mirostat_tau",
    "mirostat_eta",
}
_INT = {
    "top_k",
    "repeat_last_n",
    "seed",
    "num_predict",
    "num_ctx",
    "num_keep",
    "mirostat",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "num_gqa",
}
_BOOL = {"penalize_newline", "numa", "use_mmap", "use_mlock", "low_vram", "f16_kv", "vocab_only", "logits_all"}
# Honoured: they change how llamita samples, or the context window.
HONOURED_PARAMETERS = (*OLLAMA_OPTIONS, "num_predict", "num_ctx")
_GO_BOOL = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}
# `{{ .System }}`, `{{ range .Messages }}`, `{{- if .Prompt }}`, `{{ end }}`: Go's text/template.
_GO_TEMPLATE = re.compile(r"\{\{-?\s*(\.[A-Za-z]|range\s|if\s|end\s*-?\}\}|else\b|with\s|template\s)")


@dataclass(frozen=True)
class Command:
    """One instruction. `key`: PARAMETER's name or MESSAGE's role, else None. `line`: where it
    starts in the file (None when it comes from JSON). `value` is text from a file; JSON gives
    typed values."""

    instruction: str
    value: Any
    key: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class Modelfile:
    """A checked Modelfile: the model it starts FROM and the settings it adds. Adapter paths are
    as written (relative ones are relative to the Modelfile's folder)."""

    from_: str
    settings: ModelSettings
    commands: tuple[Command, ...]

    def line_of(self, instruction: str, value: str | None = None) -> int | None:
        for c in self.commands:
            if c.instruction == instruction and (value is None or c.value == value):
                return c.line
        return None


def read_modelfile(path: Path) -> str:
    """A Modelfile's text: UTF-8, or UTF-16 with a byte-order mark (as Ollama reads it)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelfileError(f"no Modelfile at {path} (-f names another)") from None
    except OSError as e:
        raise ModelfileError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ModelfileError(f"{path} is not UTF-8 or UTF-16 text ({e.reason} at byte {e.start})") from None


def parse_commands(text: str) -> list[Command]:
    """The instructions of a Modelfile, in order, each value trimmed and unquoted."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").removeprefix("\ufeff")
    commands: list[Command] = []
    pos, n = 0, len(text)
    while pos < n:
        if text[pos] in " \t\n":
            pos += 1
            continue
        if text[pos] == "#":
            pos = _line_end(text, pos)
            continue
        line = text.count("\n", 0, pos) + 1
        word = _leading(r"[A-Za-z]*", text, pos)
        name = word.upper()
        if name not in INSTRUCTIONS:
            if name in _OLLAMA_ONLY:
                raise ModelfileError(f"{name} ({_OLLAMA_ONLY[name]}) is Ollama's; llamita does not support it", line)
            got = text[pos : _line_end(text, pos)].split(maxsplit=1)[0]
            raise ModelfileError(
                f"unknown instruction '{got}': a Modelfile's lines start with "
                f"{', '.join(INSTRUCTIONS)} (or # for a comment)",
                line,
            )
        pos = _after_space(text, pos + len(word), name, line)
        key = None
        if name in ("PARAMETER", "MESSAGE"):
            pattern = r"[A-Za-z0-9_]*" if name == "PARAMETER" else r"[A-Za-z]*"
            key = _leading(pattern, text, pos)
            if name == "MESSAGE" and key not in MESSAGE_ROLES:
                got = (text[pos : _line_end(text, pos)].split(maxsplit=1) or [""])[0]
                raise ModelfileError(f"MESSAGE's role must be one of {', '.join(MESSAGE_ROLES)}, got '{got}'", line)
            if not key:
                raise ModelfileError("PARAMETER needs a name and a value, e.g. PARAMETER temperature 0.7", line)
            pos = _after_space(text, pos + len(key), f"{name} {key}", line)
        value, pos = _read_value(text, pos, line)
        commands.append(Command(name, value, key, line))
    return commands


def _leading(pattern: str, text: str, pos: int) -> str:
    """What `pattern` (which may match nothing) matches at `pos`."""
    match = re.compile(pattern).match(text, pos)
    return match.group() if match else ""


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _after_space(text: str, pos: int, what: str, line: int) -> int:
    """Past the spaces that must follow an instruction (or a PARAMETER's name, a role)."""
    if pos >= len(text) or text[pos] not in " \t":
        example = {"FROM": " llama3.2:1b", "ADAPTER": " ./adapter.gguf"}.get(what, " <value>")
        raise ModelfileError(f"{what} needs a value after it, e.g. {what}{example}", line)
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _read_value(text: str, start: int, line: int) -> tuple[str, int]:
    """The value from `start`: up to the first line end where the text read so far is complete
    (unquoted, or its quotes closed), as Ollama's parser decides. Returns (value, end)."""
    search = start
    while True:
        end = _line_end(text, search)
        done, value = _unquote(text[start:end].strip())
        if done:
            return value, end
        if end >= len(text):
            quote = '"""' if text[start:].startswith('"""') else '"'
            raise ModelfileError(f"a value opened with {quote} is never closed: end it with {quote}", line)
        search = end + 1


def _unquote(s: str) -> tuple[bool, str]:
    if s.startswith('"""'):
        return (True, s[3:-3]) if len(s) >= 6 and s.endswith('"""') else (False, "")
    if s.startswith('"'):
        return (True, s[1:-1]) if len(s) >= 2 and s.endswith('"') else (False, "")
    return True, s


def parse_modelfile(text: str) -> Modelfile:
    """Parse and check a Modelfile: exactly one FROM, parameters llamita can honour with values
    of their type, a Jinja TEMPLATE. Raises ModelfileError naming the line."""
    commands = parse_commands(text)
    froms = [c for c in commands if c.instruction == "FROM"]
    if not froms:
        raise ModelfileError("no FROM line: a Modelfile names the model it starts from, e.g. FROM llama3.2:1b")
    if len(froms) > 1:
        raise ModelfileError(
            f"a second FROM (the first is on line {froms[0].line}); a Modelfile has one", froms[1].line
        )
    if not froms[0].value:
        raise ModelfileError("FROM needs a model name or path", froms[0].line)
    return Modelfile(froms[0].value, settings_from_commands(commands), tuple(commands))


def settings_from_commands(commands: Iterable[Command]) -> ModelSettings:
    """The settings a list of commands adds (FROM is left to the caller). SYSTEM and TEMPLATE:
    the last one counts, as in Ollama; PARAMETER stop, MESSAGE, ADAPTER and LICENSE add up."""
    params: dict[str, Any] = {}
    system = template = None
    messages, adapters, licenses = [], [], []
    for c in commands:
        if c.instruction == "PARAMETER":
            name = (c.key or "").lower()
            value = check_parameter(name, c.value, c.line)
            params[name] = params.get(name, ()) + value if name == "stop" else value
        elif c.instruction == "SYSTEM":
            system = _text(c)
        elif c.instruction == "TEMPLATE":
            template = check_template(_text(c), c.line)
        elif c.instruction == "MESSAGE":
            if c.key not in MESSAGE_ROLES:
                raise ModelfileError(
                    f"a message's role must be one of {', '.join(MESSAGE_ROLES)}, got {c.key!r}", c.line
                )
            messages.append({"role": c.key, "content": _text(c)})
        elif c.instruction == "ADAPTER":
            if not _text(c):
                raise ModelfileError("ADAPTER needs the path of a LoRA adapter", c.line)
            adapters.append(c.value)
        elif c.instruction == "LICENSE":
            licenses.append(_text(c))
    return ModelSettings(params, system, template, tuple(messages), tuple(adapters), tuple(licenses))


def _text(c: Command) -> str:
    if not isinstance(c.value, str):
        raise ModelfileError(f"{c.instruction.lower()} must be text, got {type(c.value).__name__}", c.line)
    return c.value


def check_parameter(name: str, value: Any, line: int | None = None) -> Any:
    """A PARAMETER's value, typed (text from a file is parsed, JSON is type-checked) and checked
    as llamita would use it. `stop` comes back as a tuple of strings. Options about the hardware
    (num_gpu, num_thread...) are kept and do not change anything, as in the server's `options`."""
    if name == "stop":
        stops = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_checked_sampling("stop", tuple(_str_value(name, s, line) for s in stops), line))
    if name in _FLOAT:
        typed: Any = _float(name, value, line)
    elif name in _INT:
        typed = _int(name, value, line)
    elif name in _BOOL:
        typed = _bool(name, value, line)
    else:
        known = ", ".join(sorted(HONOURED_PARAMETERS))
        raise ModelfileError(
            f"unknown parameter '{name}': llamita honours {known} (and accepts "
            "Ollama's hardware options, which change nothing here)",
            line,
        )
    if name in OLLAMA_HARDWARE_OPTIONS:
        return typed
    if name in OLLAMA_OFF_VALUES:
        off = OLLAMA_OFF_VALUES[name]
        if off is not None and typed != off:
            raise ModelfileError(
                f"llamita cannot honour {name} {value} (it has no {name} sampler); "
                f"only {off}, which turns it off, is accepted",
                line,
            )
        return typed
    if name == "num_predict":
        _checked_sampling("max_tokens", ollama_num_predict(typed), line, shown=name)
    elif name == "num_ctx":
        if typed < 1:
            raise ModelfileError(f"num_ctx must be >= 1 (tokens), got {typed}", line)
    elif name in OLLAMA_OPTIONS:
        _checked_sampling(OLLAMA_OPTIONS[name], typed, line, shown=name)
    else:
        raise ModelfileError(
            f"llamita cannot honour the parameter '{name}'; it honours {', '.join(sorted(HONOURED_PARAMETERS))}", line
        )
    return typed


def _checked_sampling(field: str, value: Any, line: int | None, shown: str | None = None) -> Any:
    """Check a value as SamplingParams does (one set of range rules)."""
    try:
        return getattr(SamplingParams(**{field: value}), field)
    except InvalidParameterError as e:
        reason = str(e).split(": ", 1)[-1]
        raise ModelfileError(f"bad value for {shown or field}: {reason}", line) from None


def _str_value(name: str, value: Any, line: int | None) -> str:
    if not isinstance(value, str):
        raise ModelfileError(f"{name} must be text, got {value!r}", line)
    return value


def _float(name: str, value: Any, line: int | None) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value.strip()):
        return float(value)
    raise ModelfileError(f"{name} must be a number, got {value!r}", line)


def _int(name: str, value: Any, line: int | None) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():  # JSON numbers may come as 1.0
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    raise ModelfileError(f"{name} must be an integer, got {value!r}", line)


def _bool(name: str, value: Any, line: int | None) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _GO_BOOL:
        return _GO_BOOL[value.strip().lower()]
    raise ModelfileError(f"{name} must be true or false, got {value!r}", line)


def check_template(template: str, line: int | None = None) -> str:
    """A TEMPLATE llamita can render: Jinja, as a tokenizer_config.json's chat_template. Ollama's
    Go templates are refused with what to write instead."""
    if _GO_TEMPLATE.search(template) and "{%" not in template:
        raise ModelfileError(
            "TEMPLATE is a Go template (Ollama's {{ .System }} / {{ range .Messages }} "
            "form); llamita renders Jinja chat templates, as Hugging Face's "
            "tokenizer_config.json holds them: write it in Jinja, e.g. {% for m in "
            "messages %}...{{ m['content'] }}...{% endfor %}, or leave TEMPLATE out to "
            "keep the model's own",
            line,
        )
    import jinja2

    try:
        jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as e:
        raise ModelfileError(f"TEMPLATE is not valid Jinja: {e.message} (template line {e.lineno})", line) from None
    return template


def format_modelfile(from_: str, settings: ModelSettings, comment: str | None = None) -> str:
    """A Modelfile that makes a model with these settings from `from_` (what `ollama show
    --modelfile` prints); parse_modelfile(format_modelfile(...)) gives the settings back."""
    lines = [f"# {line}" for line in (comment or "").splitlines()]
    lines.append(f"FROM {_quote(from_)}")
    lines += [f"ADAPTER {_quote(a)}" for a in settings.adapters]
    if settings.template is not None:
        lines.append(f"TEMPLATE {_quote(settings.template)}")
    if settings.system is not None:
        lines.append(f"SYSTEM {_quote(settings.system)}")
    for name, value in settings.parameters.items():
        for v in value if isinstance(value, tuple) else (value,):
            lines.append(f"PARAMETER {name} {_quote(_go_text(v))}")
    lines += [f"MESSAGE {m['role']} {_quote(m['content'])}" for m in settings.messages]
    lines += [f"LICENSE {_quote(text)}" for text in settings.license]
    return "\n".join(lines) + "\n"


def _go_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _quote(s: str) -> str:
    """Quote a value only when it needs it: a line break, edge spaces, or quotes of its own."""
    if s and "\n" not in s and s == s.strip() and not s.startswith('"'):
        return s
    return f'"""{s}"""' if '"' in s or "\n" in s else f'"{s}"'


def settings_from_request(fields: Mapping[str, Any]) -> ModelSettings:
    """Settings from /api/create's JSON fields (`parameters`, `system`, `template`, `messages`,
    `license`), checked by the same rules as a Modelfile's lines."""
    commands: list[Command] = []
    params = fields.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise ModelfileError("'parameters' must be an object of Ollama option names and values")
    commands += [Command("PARAMETER", v, str(k)) for k, v in params.items()]
    for name in ("system", "template"):
        if fields.get(name) is not None:
            commands.append(Command(name.upper(), fields[name]))
    messages = fields.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
        raise ModelfileError('\'messages\' must be a list of {"role", "content"} objects')
    commands += [Command("MESSAGE", m.get("content"), m.get("role")) for m in messages]
    licenses = fields.get("license")
    for text in [licenses] if isinstance(licenses, str) else (licenses or []):
        commands.append(Command("LICENSE", text))
    return settings_from_commands(commands)
