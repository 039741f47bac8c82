"""Chat templates, rendered safely.

A model's chat template is code that came with a download: it is rendered in
Jinja's immutable sandbox (no attribute access to Python internals, no mutation of
the objects passed in), with the few helpers Hugging Face templates expect.

The sandbox alone stops escapes, not exhaustion: ``range(10**5)`` nested three deep,
``'a' * 10**10``, a macro that calls itself, or ``{{ 9**9**9 }}`` would hang, eat the
memory or end in a traceback. Every render therefore runs under a :class:`RenderBudget`
counted by the template's own operations, never by a signal or an alarm (the GUI
renders from worker threads, where neither works):

* *steps*: every loop iteration and every call (functions, methods, macros, filters)
  costs one; a render that needs more is stopped;
* *characters*: the output, and every string or list the template builds, is checked
  before it is built where its size is known in advance (``*``, ``join``, ``replace``,
  ``center``, format widths, ...) and after it is built otherwise;
* *depth*: nested calls (a recursive macro, a recursive loop) are counted;
* *seconds*: a wall-clock backstop, checked every few steps.

Every failure, whether the budget, a syntax error, ``1/0`` or a template that is not a
string at all, is a :class:`TemplateRenderError` (a ``ModelError``) that says what went
wrong and at which line of the template.

Models without a template (BERT-style cross-encoders) see the conversation as plain
text, see :func:`conversation_as_text`.
"""

from __future__ import annotations

import contextvars
import functools
import json
import operator
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import ModelError
from engine.types import Message


class TemplateRenderError(ModelError):
    """The model's chat template failed on this conversation (or does not parse)."""


class TemplateBudgetError(TemplateError):
    """Raised inside a render that ran past its :class:`RenderBudget`."""


@dataclass(frozen=True, slots=True)
class RenderBudget:
    """Limits of one render. Real chat templates need a few hundred steps and an
    output a little longer than the conversation; these leave ample room for that."""

    #: loop iterations + calls, per render (plus ``steps_per_message`` for each message)
    max_steps: int = 1_000_000
    steps_per_message: int = 200
    #: characters of output, and of any one string or list built on the way; at least
    #: ``chars_per_input_char`` times the conversation's own characters
    max_chars: int = 4 << 20
    chars_per_input_char: int = 8
    #: nested calls: macros, recursive loops, caller()
    max_depth: int = 64
    #: bits of any integer the template computes (10**4000 is about 13,300 bits)
    max_int_bits: int = 1 << 14
    #: wall-clock seconds, a backstop for steps that are each slow
    max_seconds: float = 10.0


#: characters of template source accepted (real chat templates are a few KB)
MAX_SOURCE_CHARS = 1 << 20
_CLOCK_EVERY = 256  # steps between two looks at the clock


class _Meter:
    """The running counts of one render, checked against its limits."""

    def __init__(self, budget: RenderBudget, input_chars: int = 0, n_messages: int = 0) -> None:
        self.max_steps = budget.max_steps + budget.steps_per_message * n_messages
        self.max_chars = max(budget.max_chars, budget.chars_per_input_char * input_chars)
        self.max_depth = budget.max_depth
        self.max_int_bits = budget.max_int_bits
        self.deadline = time.monotonic() + budget.max_seconds
        self.max_seconds = budget.max_seconds
        self.steps = 0
        self.depth = 0
        self.output = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise TemplateBudgetError(
                f"the template ran past its budget of {self.max_steps:,} steps (loop iterations "
                "and calls); a chat template needs a few hundred: it loops without end or is hostile")
        if self.steps % _CLOCK_EVERY == 0:
            self.clock()

    def clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateBudgetError(f"the template ran past its budget of {self.max_seconds:g} s")

    def chars(self, n: int, what: str) -> None:
        if n > self.max_chars:
            raise TemplateBudgetError(
                f"{what} would be {n:,} characters, over the budget of {self.max_chars:,}")

    def int_bits(self, bits: int) -> None:
        if bits > self.max_int_bits:
            raise TemplateBudgetError(
                f"a number would need about {bits:,} bits, over the budget of {self.max_int_bits:,}")

    def emit(self, n: int) -> None:
        self.output += n
        if self.output > self.max_chars:
            self.chars(self.output, "the output")


_METER: contextvars.ContextVar[_Meter | None] = contextvars.ContextVar("arbiter_template_meter", default=None)


def _meter() -> _Meter:
    """The meter of the render running in this thread; outside a render (Jinja folding
    constants at compile time) a fresh default one, so folding is held to the same limits."""
    return _METER.get() or _Meter(RenderBudget())


def _weight(value: Any, limit: int) -> int:
    """About how many characters ``str(value)`` takes, counted without building it and
    without recursion; stops as soon as the count passes ``limit``."""
    total, stack = 0, [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, list | tuple | set | frozenset):
            total += 2 + 2 * len(v)
            stack.extend(v)
        elif isinstance(v, dict):
            total += 2 + 4 * len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        else:
            total += 8
    return total


def _check_result(value: Any) -> Any:
    """A built value that is too large is refused (its building was bounded already)."""
    if isinstance(value, str | list | tuple | dict | set):
        _meter().chars(len(value), "a value built by the template")
    return value


#: filters whose integer arguments are sizes (widths, counts of items or slices)
_SIZE_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice"})
#: str methods whose integer argument is the width of the result
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


def _check_sizes(args: Iterable[Any]) -> None:
    """Integer arguments that are sizes (widths, counts) stay within the character budget."""
    m = _meter()
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > m.max_chars:
            m.chars(abs(a), "a width or count argument")


def _ticking(it: Iterable[Any]) -> Iterator[Any]:
    """Iterate, one step per item: what every ``{% for %}`` loops over."""
    m = _meter()
    for x in it:
        m.step()
        yield x


def _materialize(it: Iterable[Any]) -> list[Any] | tuple[Any, ...]:
    """A sequence to measure before joining it; a lazy one costs a step per item made."""
    return it if isinstance(it, list | tuple) else list(_ticking(it))


# -- pre-checks for the operations whose result size is known beforehand ----------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE_FIELD = re.compile(r"\{([^{}]*)\}")


def _check_format_widths(fmt: str, percent: bool) -> None:
    """The widths in a format string add up to at most the character budget."""
    total = 0
    if percent:
        for width, prec in _PERCENT_SPEC.findall(fmt):
            if "*" in (width, prec):
                raise TemplateBudgetError("'*' widths are not allowed in a chat template's format strings")
            total += int(width or 0) + int(prec or 0)
    else:
        for field in _BRACE_FIELD.findall(fmt):
            total += sum(int(d) for d in re.findall(r"\d+", field.partition(":")[2]))
    _meter().chars(total, "the widths of a format string")


def _join_size(sep: str, items: Sequence[Any]) -> int:
    m = _meter()
    return len(sep) * max(len(items) - 1, 0) + sum(_weight(x, m.max_chars) for x in items)


def _replace_size(s: str, old: str, new: str, count: int | None) -> int:
    hits = s.count(old) if old else len(s) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * (len(new) - len(old))


def _check_str_method(owner: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Size pre-checks for the str methods that can build a large string; returns the
    arguments to call with (``join``'s iterable is materialized to be measured)."""
    m = _meter()
    if name in _WIDTH_METHODS:
        _check_sizes(args)
        _check_sizes(kwargs.values())
    if name == "join" and args:
        items = _materialize(args[0])
        m.chars(_join_size(owner, items), "a join")
        return (items, *args[1:])
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = args[2] if len(args) > 2 and isinstance(args[2], int) else kwargs.get("count")
        m.chars(_replace_size(owner, args[0], args[1], count), "a replace")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            m.chars(len(owner) + owner.count("\t") * size, "expandtabs")
    elif name in ("format", "format_map"):
        _check_format_widths(owner, percent=False)
    return args


def _mul(a: Any, b: Any) -> Any:
    m = _meter()
    if isinstance(a, int) and isinstance(b, int):
        m.int_bits(a.bit_length() + b.bit_length())
    elif isinstance(a, str | list | tuple) and isinstance(b, int):
        m.chars(_weight(a, m.max_chars) * max(b, 0), "a repetition")
    elif isinstance(b, str | list | tuple) and isinstance(a, int):
        m.chars(_weight(b, m.max_chars) * max(a, 0), "a repetition")
    return operator.mul(a, b)


def _pow(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        _meter().int_bits(a.bit_length() * b)
    return operator.pow(a, b)


def _mod(a: Any, b: Any) -> Any:
    if isinstance(a, str):
        _check_format_widths(a, percent=True)
        _meter().chars(len(a) + _weight(b, _meter().max_chars), "a % format")
    return operator.mod(a, b)


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        _meter().int_bits(max(a.bit_length(), b.bit_length()) + 1)
    return _check_result(operator.add(a, b))


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {"*": _mul, "**": _pow, "%": _mod, "+": _add}


# -- filters -----------------------------------------------------------------------

def _filter_pre(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Size pre-checks of the filters whose output can outgrow their input."""
    m = _meter()
    if name in _SIZE_FILTERS:
        _check_sizes(args)
        _check_sizes(kwargs.values())
    if name == "join":
        value = _materialize(value)
        sep = args[0] if args else kwargs.get("d", "")
        m.chars(_join_size(sep if isinstance(sep, str) else "", value), "a join")
    elif name == "replace" and isinstance(value, str) and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count")
        m.chars(_replace_size(value, str(args[0]), str(args[1]), count if isinstance(count, int) else None),
                "a replace")
    elif name == "indent" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 4)
        per_line = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        m.chars(len(value) + (value.count("\n") + 1) * per_line, "an indent")
    elif name == "wordwrap" and isinstance(value, str):
        wrap = kwargs.get("wrapstring", args[2] if len(args) > 2 else None)
        m.chars(len(value) * (1 + (len(wrap) if isinstance(wrap, str) else 1)), "a wordwrap")
    elif name == "format" and isinstance(value, str):
        _check_format_widths(value, percent=True)
    elif name in ("string", "pprint", "tojson", "list", "urlize", "xmlattr"):
        m.chars(_weight(value, m.max_chars), f"the '{name}' filter's output")
        indent = args[0] if args else kwargs.get("indent")
        if name == "tojson" and isinstance(indent, int | str) and not isinstance(indent, bool):
            width = indent if isinstance(indent, int) else len(indent)
            if width > 16:
                raise TemplateBudgetError(f"tojson indent {width} is over 16")
    return value


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that costs a step, is size-checked before and after, and whose lazy
    results (map, select, batch, ...) cost a step per item."""
    passes = getattr(func, "jinja_pass_arg", None) is not None

    @functools.wraps(func)  # keeps jinja_pass_arg: Jinja still passes the context first
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _meter().step()
        head, rest = (args[:1], args[1:]) if passes else ((), args)
        if rest:
            rest = (_filter_pre(name, rest[0], rest[1:], kwargs), *rest[1:])
        out = func(*head, *rest, **kwargs)
        if isinstance(out, Iterator) and not isinstance(out, str):
            return _ticking(out)
        return _check_result(out)
    return guarded


# -- the environment ------------------------------------------------------------------

def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Hugging Face's variant: keeps non-ASCII characters as they are.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` passes here before it becomes text: measure it first."""
    if not isinstance(value, str):
        m = _meter()
        m.chars(_weight(value, m.max_chars), "a printed value")
    return value


class _BudgetCodeGenerator(CodeGenerator):
    """Jinja's code generator, with ``a ~ b`` measured before it is joined."""

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:  # noqa: N802 - Jinja's visitor name
        self.write("environment.budget_str_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BudgetEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, metered: see the module docstring."""

    code_generator_class = _BudgetCodeGenerator
    intercepted_binops = frozenset(_BINOPS)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        m = _meter()
        m.step()
        if operator == "+" and type(left) is str and type(right) is str:
            # the common case in chat templates ('<|im_start|>' + role + ...): kept cheap
            if len(left) + len(right) > m.max_chars:
                m.chars(len(left) + len(right), "a value built by the template")
            return left + right
        return _BINOPS[operator](left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805,B902 - Jinja's signature
        m = _meter()
        m.step()
        target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner, name = getattr(target, "__self__", None), getattr(target, "__name__", "")
        if isinstance(owner, str):
            args = _check_str_method(owner, name, args, kwargs)
        m.depth += 1
        try:
            if m.depth > m.max_depth:
                raise TemplateBudgetError(
                    f"calls nest deeper than {m.max_depth} (a macro or loop that calls itself without end?)")
            return _check_result(super().call(__context, __obj, *args, **kwargs))
        finally:
            m.depth -= 1

    def concat(self, parts: Iterable[str]) -> str:  # type: ignore[override] - a method, not "".join
        """Joins the output captured by macros, ``{% set %}`` blocks and filter blocks."""
        m = _meter()
        buf, size = [], 0
        for p in parts:
            size += len(p)
            m.chars(size, "captured output")
            buf.append(p)
        return "".join(buf)

    def budget_str_join(self, values: Sequence[Any]) -> str:
        m = _meter()
        m.chars(sum(_weight(v, m.max_chars) for v in values), "a '~' concatenation")
        return "".join(map(str, values))

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> str:
        # every {% for %} iterates through the step counter
        for loop in source.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "arbiter_steps", [], [], None, None, lineno=loop.lineno)
        return super()._generate(source, *args, **kwargs)


def _environment() -> _BudgetEnvironment:
    # optimized=False: Jinja's optimizer would fold constant expressions at compile
    # time, outside any render's budget
    env = _BudgetEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols],
                             optimized=False, finalize=_finalize)
    env.filters["tojson"] = _tojson
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
    env.filters["arbiter_steps"] = _ticking
    del env.globals["lipsum"]  # random text of any length: no template needs it
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _template_line(tb: Any) -> int | None:
    """The template line of the innermost template frame of a traceback (Jinja rewrites
    its tracebacks so that template frames carry template line numbers)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _describe(e: BaseException) -> str:
    if isinstance(e, TemplateError) and not isinstance(e, TemplateSyntaxError):
        return str(e.message if e.message is not None else e)
    if isinstance(e, RecursionError):
        return "it nests too deeply (RecursionError)"
    if isinstance(e, MemoryError):
        return "it ran out of memory"
    return f"{type(e).__name__}: {e}"


@lru_cache(maxsize=32)
def _compile(source: str):  # noqa: ANN202 - jinja2.Template
    if len(source) > MAX_SOURCE_CHARS:
        raise TemplateRenderError(f"the model's chat template is {len(source):,} characters, "
                                  f"over the {MAX_SOURCE_CHARS:,} accepted")
    token = _METER.set(_Meter(RenderBudget()))
    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateRenderError(f"the model's chat template does not parse (template line "
                                  f"{e.lineno}): {e.message}") from None
    except Exception as e:  # the parser's own limits: RecursionError, ValueError (huge int), ...
        raise TemplateRenderError(f"the model's chat template does not parse: {_describe(e)}") from None
    finally:
        _METER.reset(token)


class ChatTemplate:
    """A compiled chat template plus the special tokens it refers to.

    ``origin`` names where the template came from (a file, a GGUF key) for messages.
    """

    def __init__(self, source: Any, special_tokens: dict[str, str | None] | None = None, *,
                 budget: RenderBudget | None = None, origin: str | None = None) -> None:
        self.origin = origin
        if not isinstance(source, str):
            raise TemplateRenderError(f"{self._where()}the model's chat template must be a string; "
                                      f"got {type(source).__name__}")
        self.source = source
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if isinstance(v, str)}
        self.budget = budget or RenderBudget()
        try:
            self._template = _compile(source)
        except TemplateRenderError as e:
            raise TemplateRenderError(f"{self._where()}{e}") from None

    def _where(self) -> str:
        return f"{self.origin}: " if self.origin else ""

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        dicts = [m.to_dict() for m in messages]
        meter = _Meter(self.budget, sum(len(m.content) for m in messages), len(dicts))
        token = _METER.set(meter)
        parts: list[str] = []
        try:
            for chunk in self._template.generate(messages=dicts, add_generation_prompt=add_generation_prompt,
                                                 **self.special_tokens):
                meter.emit(len(chunk))
                parts.append(chunk)
        except Exception as e:  # the template is foreign code: whatever it raises is its failure
            line = _template_line(e.__traceback__)
            at = f" (template line {line})" if line else ""
            raise TemplateRenderError(f"{self._where()}the model's chat template failed on this "
                                      f"conversation{at}: {_describe(e)}") from None
        finally:
            _METER.reset(token)
        return "".join(parts)


# Role labels of the plain-text rendering used by cross-encoders (no chat template).
_TEXT_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def conversation_as_text(messages: Sequence[Message]) -> str:
    """The first segment of a cross-encoder's (conversation, response) text pair.

    A conversation that is a single user turn is just that turn's text, which is
    what cross-encoders are trained on (query, passage). Anything longer is one line
    per message, ``Role: content``, so the model can see who said what:

    >>> conversation_as_text((Message("user", "Hi"),))
    'Hi'
    >>> conversation_as_text((Message("system", "Be brief."), Message("user", "Hi")))
    'System: Be brief.\\nUser: Hi'
    """
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    return "\n".join(f"{_TEXT_ROLES[m.role]}: {m.content}" for m in messages)
