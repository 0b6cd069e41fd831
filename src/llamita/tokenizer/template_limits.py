"""Resource limits for chat templates from model files: steps, time, and sizes.

Jinja's sandbox keeps a template away from Python internals, but not from running for ever or
allocating without bound: `{% for a in range(99999) %}{% for b in range(99999) %}` is 10^10
iterations, `'a' * 10**10` ten gigabytes, a namespace string doubled with `~` forty times a
terabyte, `'x'|center(10**10)` another ten gigabytes. Each is refused here, before the work or
the allocation, with a TemplateError.

How, without a watchdog thread (Python cannot stop another thread's render) or a signal (the
server renders on worker threads, and only the main thread gets signals): before compiling, the
parsed template is rewritten so that every loop iterable, every printed value and every `~`
concatenation passes through a small filter that charges this render's `RenderBudget`; the
sandbox charges every call and operator too. The budget counts steps (loop iterations, calls,
operators, outputs) and looks at the clock every 256 of them, so a render that loops, recurses
or prints without end stops at `max_steps` or `max_seconds`, whichever comes first. Sizes are
checked before an operation allocates (`'a' * n`, `center(n)`, `replace`, `join`, format
widths) and on every result (no string, list or output longer than `max_chars`).
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import wraps
from typing import Any

from jinja2 import nodes, pass_context
from jinja2.runtime import Context
from jinja2.visitor import NodeTransformer

from llamita.errors import TemplateError

# The context key of a render's budget: not a valid Jinja name, so a template cannot touch it.
BUDGET_KEY = "llamita.render-budget"
ITER_FILTER, EMIT_FILTER, SIZE_FILTER = "llamita_iter", "llamita_emit", "llamita_size"
# Integers a template may build (bits): far beyond any id or count, far below a slow bignum.
MAX_INT_BITS = 4096
MAX_JSON_INDENT = 64
MAX_PARTS = 100_000  # lists `batch` and `slice` may build (the sandbox's range limit)
_SIZED = (str, bytes, list, tuple, dict)


@dataclass(frozen=True)
class TemplateLimits:
    """What one render may use. The defaults are far above what real chat templates need: the
    Llama 3.1 template with 50 tools over 1,000 messages takes 6,161 steps and 12 ms."""

    max_steps: int = 1_000_000
    max_seconds: float = 1.0
    max_chars: int = 8 << 20  # any one string or list, and all text a render prints


class RenderBudget:
    """Steps, output and time spent by one render."""

    def __init__(self, limits: TemplateLimits) -> None:
        self.limits = limits
        self.steps = 0
        self.output_chars = 0
        self._clock_at = 256
        self._deadline = time.monotonic() + limits.max_seconds

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > self.limits.max_steps:
            raise TemplateError(
                f"chat template stopped: more than {self.limits.max_steps:,} steps "
                "(loop iterations, calls, outputs); does it loop without end?"
            )
        if self.steps >= self._clock_at:
            self._clock_at = self.steps + 256
            if time.monotonic() > self._deadline:
                raise TemplateError(f"chat template stopped: it ran for more than {self.limits.max_seconds:g} s")

    def emit(self, value: Any) -> None:
        self.output_chars += len(value) if isinstance(value, str) else len(str(value))
        if self.output_chars > self.limits.max_chars:
            raise TemplateError(f"chat template stopped: it printed more than {self.limits.max_chars:,} characters")
        self.step()


def too_big(what: str, size: int, limits: TemplateLimits) -> TemplateError:
    return TemplateError(f"chat template stopped: {what} would hold {size:,} items (limit {limits.max_chars:,})")


def check_size(value: Any, limits: TemplateLimits) -> Any:
    if isinstance(value, _SIZED) and len(value) > limits.max_chars:
        raise too_big(f"a {type(value).__name__}", len(value), limits)
    return value


def _budget(context: Context) -> RenderBudget:
    budget = context.get(BUDGET_KEY)
    if not isinstance(budget, RenderBudget):
        raise TemplateError("chat template rendered without a budget")
    return budget


# ------------------------------------------------------------------ the rewrite


@pass_context
def _iter_filter(context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    budget = _budget(context)
    for item in iterable:
        budget.step()
        yield item


@pass_context
def _emit_filter(context: Context, value: Any) -> Any:
    _budget(context).emit(value)
    return value


@pass_context
def _size_filter(context: Context, value: Any) -> Any:
    budget = _budget(context)
    budget.step()
    return check_size(value, budget.limits)


LIMIT_FILTERS = {ITER_FILTER: _iter_filter, EMIT_FILTER: _emit_filter, SIZE_FILTER: _size_filter}


def _through(node: nodes.Node | None, name: str, lineno: int) -> nodes.Filter:
    # Node, not Expr: jinja2 types a loop's iterable (For.iter) as any Node.
    return nodes.Filter(node, name, [], [], None, None, lineno=lineno)


class _ChargeBudget(NodeTransformer):
    """Route loop iterables, printed values, `~` results and `{% set %}` blocks through the
    budget filters. Printed literal text counts too: a loop can repeat it."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _through(node.iter, ITER_FILTER, node.lineno)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            _through(
                nodes.Const(n.data, lineno=n.lineno) if isinstance(n, nodes.TemplateData) else n, EMIT_FILTER, n.lineno
            )
            for n in node.nodes
        ]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _through(node, SIZE_FILTER, node.lineno)

    def visit_AssignBlock(self, node: nodes.AssignBlock) -> nodes.Node:
        self.generic_visit(node)
        node.filter = _through(node.filter, SIZE_FILTER, node.lineno)
        return node


def charge_budget(ast: nodes.Template) -> nodes.Template:
    """The template's AST with every loop, output and concatenation charged to the budget."""
    charged: nodes.Template = _ChargeBudget().visit(ast)  # the root stays a Template
    return charged


# ------------------------------------------------------------------ checks before allocating

_PRINTF_FIELD = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def check_printf(fmt: str, limits: TemplateLimits) -> None:
    """`'%0999999999d' % 1` allocates its width: refuse widths from arguments or past the limit."""
    for width, precision in _PRINTF_FIELD.findall(fmt):
        for part in (width, precision):
            if part == "*" or (part and int(part) > limits.max_chars):
                raise TemplateError(f"chat template stopped: format width {part!r} is not allowed")


def check_str_format(fmt: str, limits: TemplateLimits) -> None:
    """The same for `'{:>999999999}'.format(x)`, and no widths taken from arguments."""
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if not spec:
            continue
        if "{" in spec:
            raise TemplateError("chat template stopped: nested format fields are not allowed")
        for digits in re.findall(r"\d+", spec):
            if int(digits) > limits.max_chars:
                raise TemplateError(f"chat template stopped: format width {digits} is not allowed")


def _check_ints(args: Iterable[Any], limits: TemplateLimits) -> None:
    # A width, count or length argument (`center(n)`, `zfill(n)`, `to_bytes(n)`, `batch(n)`)
    # sizes what is allocated; no real template passes one in the millions.
    for a in args:
        if isinstance(a, int) and abs(a) > limits.max_chars:
            raise too_big("an argument", abs(a), limits)


def _replace_bound(s: str | bytes, old: Any, new: Any, count: Any = -1) -> int:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        n = len(s) + 1 if not old else s.count(old)
    elif isinstance(s, bytes) and isinstance(old, bytes) and isinstance(new, bytes):
        n = len(s) + 1 if not old else s.count(old)
    else:  # str.replace refuses mixed types itself
        return len(s)
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(s) + n * len(new)


def check_binop(op: str, left: Any, right: Any, limits: TemplateLimits) -> None:
    """Refuse `'a' * 10**10`, `2 ** 10**9`, `x + x` past the limit and printf widths, before
    Python allocates the result."""
    if op == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, _SIZED) and isinstance(n, int) and len(seq) * n > limits.max_chars:
                raise too_big(f"a repeated {type(seq).__name__}", len(seq) * n, limits)
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateError(f"chat template stopped: integers past {MAX_INT_BITS} bits")
    elif op == "**":
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * left.bit_length() > MAX_INT_BITS
        ):
            raise TemplateError(f"chat template stopped: integers past {MAX_INT_BITS} bits")
    elif op == "+":
        if isinstance(left, _SIZED) and isinstance(right, _SIZED) and len(left) + len(right) > limits.max_chars:
            raise too_big(f"a joined {type(left).__name__}", len(left) + len(right), limits)
    elif op == "%" and isinstance(left, str):
        check_printf(left, limits)


def check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any], limits: TemplateLimits) -> tuple[Any, ...]:
    """Refuse calls whose result would be too big to build; return `args` (a `join` iterable is
    materialized to count it)."""
    _check_ints(args, limits)
    _check_ints(kwargs.values(), limits)
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if not isinstance(owner, (str, bytes)):
        return args
    bound = len(owner)
    if name == "replace" and len(args) >= 2:
        bound = _replace_bound(owner, *args[:3])
    elif name == "join" and args:
        items = list(args[0])
        args = (items, *args[1:])
        bound = sum(len(x) for x in items if isinstance(x, (str, bytes))) + len(owner) * len(items)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        bound = len(owner) + tabs * max(int(size), 0)
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, (str, bytes))), default=1)
        bound = len(owner) * max(longest, 1)
    if bound > limits.max_chars:
        raise too_big(f"str.{name}()", bound, limits)
    return args


def _filter_bound(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Upper bound of what filter `name` builds from `value`, for the filters that can amplify."""
    size = len(value) if isinstance(value, _SIZED) else len(str(value))
    if name == "replace" and len(args) >= 2 and isinstance(value, str):
        return _replace_bound(value, *args[:3])
    if name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        per_line = len(width) if isinstance(width, str) else int(width)
        return size + (str(value).count("\n") + 1) * per_line
    if name == "wordwrap":
        wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring")
        return size * (1 + (len(wrap) if isinstance(wrap, str) else 1))
    if name == "join":
        sep = args[0] if args else kwargs.get("d", "")
        items = value if isinstance(value, _SIZED) else ()
        return sum(len(str(x)) for x in items) + len(str(sep)) * len(items)
    return size


def limit_filter(name: str, fn: Callable[..., Any], limits: TemplateLimits) -> Callable[..., Any]:
    """Filter `fn` with its arguments checked before it runs and its result after."""
    # Filters marked pass_context / pass_eval_context / pass_environment get that object first.
    skip = 1 if hasattr(fn, "jinja_pass_arg") else 0

    @wraps(fn)
    def limited(*args: Any, **kwargs: Any) -> Any:
        value, rest = (args[skip], args[skip + 1 :]) if len(args) > skip else (None, ())
        _check_ints(rest, limits)
        _check_ints(kwargs.values(), limits)
        if name == "format" and isinstance(value, str):
            check_printf(value, limits)
        if name in ("batch", "slice") and rest and isinstance(rest[0], int) and rest[0] > MAX_PARTS:
            raise TemplateError(f"chat template stopped: {name}({rest[0]}) makes too many lists")
        if name == "tojson":
            indent = rest[0] if rest else kwargs.get("indent")
            if isinstance(indent, int) and indent > MAX_JSON_INDENT:
                raise TemplateError(f"chat template stopped: tojson indent {indent} is too large")
        if name == "join" and value is not None and not isinstance(value, _SIZED):
            value = list(value)
            args = (*args[:skip], value, *rest)
        if value is not None:
            bound = _filter_bound(name, value, rest, kwargs)
            if bound > limits.max_chars:
                raise too_big(f"the {name} filter's result", bound, limits)
        return check_size(fn(*args, **kwargs), limits)

    return limited
