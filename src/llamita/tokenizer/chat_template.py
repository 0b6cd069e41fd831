"""Render a model's Jinja chat template the way Hugging Face `apply_chat_template` does.

Templates come from model files, so they are untrusted code: they run in Jinja's immutable
sandbox, and any attempt to reach an unsafe attribute (`''.__class__`, `cycler.__init__`, a
list's `append`) fails at once instead of rendering as an empty string. A render is also
bounded in steps, time and size (template_limits.py): a template that loops for ever or builds
a gigantic string is stopped with a TemplateError.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NoReturn

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llamita.errors import TemplateError
from llamita.tokenizer.template_limits import (
    BUDGET_KEY,
    LIMIT_FILTERS,
    RenderBudget,
    TemplateLimits,
    charge_budget,
    check_binop,
    check_call,
    check_size,
    check_str_format,
    limit_filter,
)

# Used by Tokenizer.encode_chat when the model file has no `tokenizer.chat_template`: ChatML
# (`<|im_start|>role\ncontent<|im_end|>\n`), the most common format among small chat models.
# For a vocabulary without the ChatML tokens the markers are tokenized as plain text.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
    "{%- if message['content'] is string -%}{{- message['content'] -}}\n"
    "{%- elif message['content'] is mapping -%}{{- message['content'] | tojson -}}\n"
    "{%- elif message['content'] is iterable -%}\n"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endfor -%}\n"
    "{%- endif -%}\n"
    "{{- '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, but unsafe access raises instead of yielding an Undefined, and
    every call and arithmetic operator is charged to the render's budget and size-checked."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, limits: TemplateLimits, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limits = limits

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        context.get(BUDGET_KEY).step()
        check_binop(operator, left, right, self.limits)
        return check_size(super().call_binop(context, operator, left, right), self.limits)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __context.get(BUDGET_KEY).step()
        args = check_call(__obj, args, kwargs, __self.limits)
        return check_size(super().call(__context, __obj, *args, **kwargs), __self.limits)

    def wrap_str_format(self, value: Any) -> Any:
        wrapper = super().wrap_str_format(value)
        if wrapper is not None:
            check_str_format(value.__self__, self.limits)
        return wrapper


class _GenerationBlock(Extension):
    """Accept HF's `{% generation %}...{% endgeneration %}` markers; render the body as is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(
    value: Any,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
    ensure_ascii: bool = False,
) -> str:
    # HF's tojson: plain json.dumps, no HTML escaping (Jinja's own filter escapes < > & ').
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(f"the chat template rejected the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ChatTemplate:
    """A compiled chat template.

    bos_token / eos_token are the texts templates see as `bos_token` / `eos_token`.
    Raises TemplateError if the source does not compile.
    """

    def __init__(
        self, source: str, *, bos_token: str = "", eos_token: str = "", limits: TemplateLimits = TemplateLimits()
    ) -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.limits = limits
        env = _Sandbox(
            limits,
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols", _GenerationBlock],
        )
        env.filters["tojson"] = _tojson
        env.filters = {name: limit_filter(name, fn, limits) for name, fn in env.filters.items()}
        env.filters.update(LIMIT_FILTERS)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        del env.globals["lipsum"]  # lipsum(n) writes n paragraphs; no chat template uses it
        try:
            ast = env.parse(source)
            self._variables = frozenset(meta.find_undeclared_variables(ast))
            self._template = env.from_string(charge_budget(ast))
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"chat template syntax error at line {exc.lineno}: {exc.message}") from exc
        except (RecursionError, MemoryError, SyntaxError) as exc:  # nested past what Python parses
            raise TemplateError(f"chat template cannot be compiled: {_one_line(exc)}") from exc

    def uses(self, name: str) -> bool:
        """Whether the template reads the variable `name` (e.g. "tools") from its context."""
        return name in self._variables

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt text for `messages` (OpenAI-style dicts: role, content, tool_calls...).

        extra: more template variables (tools, documents, date_string, builtin_tools...).
        As in HF, `tools` and `documents` are defined (None) unless given.
        Raises TemplateError if the template fails, calls raise_exception or touches something
        unsafe.
        """
        context: dict[str, Any] = {
            "messages": messages,
            "tools": None,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        context.update(extra)
        budget = RenderBudget(self.limits)
        context[BUDGET_KEY] = budget
        try:
            # Chunk by chunk rather than render(): the output is charged as it is produced.
            return "".join(self._template.generate(**context))
        except TemplateError:
            raise
        except SecurityError as exc:
            raise TemplateError(f"chat template tried something unsafe: {_one_line(exc)}") from exc
        except Exception as exc:  # any failure inside template code is the template's error
            raise TemplateError(f"chat template failed to render: {_one_line(exc)}") from exc
