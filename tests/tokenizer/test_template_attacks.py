"""Chat templates as attacks: escapes from the sandbox of the kind reported against other
engines (llama-cpp-python's CVE-2024-34359 "Llama Drama", the same unsandboxed-Jinja flaw in
vLLM and SGLang), templates that never end, templates that build gigantic values.

Each one must end in a TemplateError quickly, run no command and allocate no gigabytes; the
memory guard (tests/bounded.py) turns a large allocation into a failure.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llamita.errors import TemplateError
from llamita.tokenizer.chat_template import ChatTemplate
from llamita.tokenizer.template_limits import TemplateLimits

from bounded import bounded

MESSAGES = [{"role": "user", "content": "hola"}]

# {cmd} is a shell command that creates a marker file: it must never run.
ESCAPES = [
    # CVE-2024-34359 (llama-cpp-python), as published: walk object's subclasses to a warnings
    # class, whose module holds the builtins.
    '{% for x in ().__class__.__base__.__subclasses__() %}{% if "warning" in x.__name__ %}'
    "{{ x()._module.__builtins__['__import__']('os').popen(\"{cmd}\") }}{% endif %}{% endfor %}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').popen('{cmd}').read() }}",
    "{{ cycler.__init__.__globals__.os.popen('{cmd}').read() }}",
    "{{ joiner.__init__.__globals__.os.popen('{cmd}').read() }}",
    "{{ namespace.__init__.__globals__.os.popen('{cmd}').read() }}",
    "{{ lipsum.__globals__['os'].popen('{cmd}').read() }}",
    "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('{cmd}') }}",
    "{{ strftime_now.__globals__['datetime'].__init__.__globals__ }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('{cmd}') }}",
    # Filter-bypass spellings: attr(), item lookup with built names, hex escapes.
    "{{ ()|attr('__class__')|attr('__base__')|attr('__subclasses__')() }}",
    "{{ ()|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ ''['__cla' ~ 'ss__']['__mro__'] }}",
    "{{ messages[0]['__class__'] }}",
    "{{ (messages|map(attribute='__class__')|list) }}",
    "{{ messages|selectattr('__class__')|list }}",
    "{% set f = cycler.__init__ %}{{ f.__globals__.os.system('{cmd}') }}",
    # Through str.format's field syntax and the printf-style filter.
    "{{ '{0.__init__.__globals__[os]}'.format(cycler) }}",
    "{{ '{0.__class__.__mro__}'.format(messages) }}",
    # Internal attributes without underscores: type.mro, generator frames, function globals.
    "{{ dict.mro() }}",
    "{% set g = messages|map('string') %}{{ g.gi_frame.f_globals }}",
    "{{ range.__code__.co_consts }}",
    "{{ namespace.__call__.__globals__ }}",
    # Mutating what the caller passed in.
    "{{ messages.append({'role': 'system', 'content': 'pwned'}) }}",
    "{{ messages[0].update({'content': 'pwned'}) }}",
    "{{ messages.pop() }}",
]

LOOPS = [
    "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}",
    "{% for a in range(99999) %}{% for b in range(99999) %}x{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
    "{% for a in range(99999) %}{% for b in range(99999) %}{% set c = a * b %}{% endfor %}{% endfor %}",
    "{% for a in range(99999) %}{{ range(99999)|list|length }}{% endfor %}",
]

GIANTS = [
    "{{ 'a' * 10**10 }}",
    "{{ 10**10 * 'a' }}",
    "{{ [0] * 10**10 }}",
    "{{ 'a' * 99999 * 99999 }}",
    "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{% set ns = namespace(s=[0]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = '%s%s' % (ns.s, ns.s) %}{% endfor %}",
    "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = '{}{}'.format(ns.s, ns.s) %}{% endfor %}",
    "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = [ns.s, ns.s]|join %}{% endfor %}",
    "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}{{ d('a', 64) }}",
    "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set t %}{{ ns.s }}{{ ns.s }}{% endset %}"
    "{% set ns.s = t %}{% endfor %}",
    "{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "{{ 2 ** (10 ** 9) }}",  # Jinja's ** groups left to right
    "{{ 'x'|center(10**10) }}",
    "{{ 'x'.center(10**10) }}",
    "{{ 'x'.ljust(10**10) }}",
    "{{ 'x'.zfill(10**10) }}",
    "{{ (1).to_bytes(10**10, 'big') }}",
    "{{ 'a'|indent(10**10) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '%*d' % (10**9, 1) }}",
    "{{ '%0999999999d'|format(1) }}",
    "{{ '{:>9999999999}'.format(1) }}",
    "{{ '{:{}}'.format(1, 10**10) }}",
    "{{ ('a' * 1000000)|replace('a', 'a' * 1000) }}",
    "{{ ('a' * 1000000).replace('a', 'a' * 1000) }}",
    "{{ ('a' * 1000000).replace('', 'a' * 1000) }}",
    "{{ range(99999)|join('x' * 1000000) }}",
    "{{ ('x' * 1000000).join(range(99999)|map('string')) }}",
    "{{ ('\t' * 1000000).expandtabs(1000) }}",
    "{{ [1]|batch(10**9, 'x')|list }}",
    "{{ [1]|slice(10**9)|list }}",
    "{{ messages|tojson(indent=10**9) }}",
    "{{ ('a\\n' * 1000000)|indent('x' * 1000) }}",
    "{% for i in range(99999) %}{{ 'x' * 1000000 }}{% endfor %}",
    "{% filter upper %}{% for i in range(99999) %}{{ 'x' * 1000000 }}{% endfor %}{% endfilter %}",
    "{{ lipsum(10**6) }}",
    "{{ range(10**10)|list }}",
    "{{ " + "(" * 100_000 + "1" + ")" * 100_000 + " }}",
]


def _stopped(source: str, seconds: float = 5.0) -> str:
    """The TemplateError message; fails if the template renders, runs long or allocates GBs."""
    start = time.monotonic()
    with bounded(int(seconds) + 5), pytest.raises(TemplateError) as info:
        ChatTemplate(source).render(MESSAGES)
    assert time.monotonic() - start < seconds, f"took {time.monotonic() - start:.1f} s"
    assert "\n" not in str(info.value)
    # Stopped by a limit, not by the memory guard: a failed allocation reads "MemoryError".
    assert "MemoryError" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("source", ESCAPES, ids=[f"escape-{i}" for i in range(len(ESCAPES))])
def test_sandbox_escapes_are_refused(source: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    messages = [{"role": "user", "content": "hola"}]
    with pytest.raises(TemplateError):
        ChatTemplate(source.replace("{cmd}", f"touch {marker}")).render(messages)
    assert not marker.exists()
    assert messages == [{"role": "user", "content": "hola"}]


@pytest.mark.parametrize("source", LOOPS, ids=[f"loop-{i}" for i in range(len(LOOPS))])
def test_endless_templates_are_stopped(source: str) -> None:
    _stopped(source)


@pytest.mark.parametrize("source", GIANTS, ids=[f"giant-{i}" for i in range(len(GIANTS))])
def test_gigantic_values_are_refused_before_they_are_built(source: str) -> None:
    _stopped(source)


def test_the_limits_say_what_stopped_the_template() -> None:
    nested = "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}"
    assert "steps" in _stopped(nested)
    slow = ChatTemplate(nested, limits=TemplateLimits(max_steps=10**12, max_seconds=0.2))
    start = time.monotonic()
    with pytest.raises(TemplateError, match="ran for more than 0.2 s"):
        slow.render(MESSAGES)
    assert time.monotonic() - start < 1.0
    assert "would hold 10,000,000,000 items" in _stopped("{{ 'a' * 10**10 }}")
    assert "printed more than" in _stopped("{% for i in range(99999) %}{{ 'x' * 1000000 }}{% endfor %}")


def test_limits_leave_room_for_real_work() -> None:
    """Long conversations and big tool lists render: the limits are far from real use."""
    template = ChatTemplate(
        "{% for m in messages %}{{ '<|im_start|>' ~ m['role'] ~ '\\n' ~ m['content'] ~ '<|im_end|>\\n' }}"
        "{% endfor %}{{ tools|tojson(indent=4) }}{{ ('=' * 80)|center(100) }}{{ '%05d' % 42 }}"
        "{{ '{:>8}'.format('x') }}{{ range(1000)|join(',') }}"
    )
    messages = [{"role": "user" if i % 2 else "assistant", "content": "palabra " * 500} for i in range(400)]
    tools = [
        {"name": f"tool_{i}", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}
        for i in range(200)
    ]
    out = template.render(messages, tools=tools)
    assert out.count("<|im_end|>") == 400 and len(out) > 1_600_000
    assert "00042" in out and "       x" in out and out.endswith(",998,999")
