"""Fuzzing chat templates: random and hostile Jinja always ends in text or a TemplateRenderError.

Sources are drawn from a grammar of Jinja fragments weighted towards what attacks and
accidents look like: SSTI chains (``__class__``, ``__mro__``, ``__subclasses__``, the
``cycler``/``joiner``/``namespace`` globals' ``__init__.__globals__``), huge ranges and
nested loops, self-calling macros and recursive loops, big numbers, repetition, format
widths and filters with size arguments. Every render runs under a small budget (so the
suite stays quick); the default budget is exercised in tests/test_templates.py.

Properties: nothing but ``TemplateRenderError`` is raised; an output stays inside the
character budget; an environment variable planted as a canary never reaches the output
(no payload got to ``os``); message content is data, never template code.
"""

from __future__ import annotations

import os
import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.templates import ChatTemplate, RenderBudget, TemplateRenderError
from engine.types import Message

pytestmark = pytest.mark.fuzz

CANARY = f"arbiter-canary-{secrets.token_hex(8)}"
os.environ["ARBITER_TEMPLATE_CANARY"] = CANARY
SMALL = RenderBudget(max_steps=20_000, steps_per_message=0, max_chars=1 << 16, chars_per_input_char=0,
                     max_depth=32)
CONV = (Message("system", "sys"), Message("user", "hello, world"))

INTS = st.sampled_from(["0", "1", "2", "3", "7", "-1", "100", "100000", "10**9", "10**12", "9" * 30])
ROOTS = st.sampled_from([
    "messages", "messages[0]", "messages[-1].content", "m", "m.content", "x", "ns.v", "loop",
    "'ab,c'", "'%s'", "'{}'", "'{:>9}'", "[1, 2, 3]", "{'a': 1}", "range(3)", "range(100000)",
    "cycler", "joiner", "namespace", "self", "lipsum", "dict", "range", "raise_exception",
    "strftime_now", "add_generation_prompt", "bos_token", "none", "true", "caller",
])
TRAILERS = st.sampled_from([
    ".__class__", ".__mro__", "[1]", "[0]", ".__subclasses__()", ".__init__", ".__globals__",
    ".__builtins__", "['os']", ".os", ".environ", ".environ['ARBITER_TEMPLATE_CANARY']",
    ".popen('echo pwned').read()", ".__base__", ".__dict__", ".mro()", ".gi_frame", ".f_globals",
    "()", "(1)", ".upper()", ".split(',')", ".format(1, 2)", ".join(['a', 'b'])", ".items()",
    ".center(10**9)", ".zfill(99999999)", ".expandtabs(10**8)", ".replace('a', 'aaaa')",
    "|length", "|list", "|join(',')", "|center(10**9)", "|replace('a', 'bb')", "|tojson",
    "|tojson(indent=99)", "|string", "|attr('__class__')", "|indent(10**7)", "|batch(3)",
    "|slice(10**8)", "|map('upper')|list", "|sort", "|reverse", "|first", "|sum", "|format(1)",
    "|wordwrap(1, wrapstring='xxxxxxxx')", "|int", "|pprint", "|unique|list", "|dictsort",
    "|selectattr('role')|list", "|truncate(3)", "|urlize", "|xmlattr",
])
OPS = st.sampled_from([" * ", " ** ", " + ", " ~ ", " % ", " // ", " / ", " - ", " == ", " in "])


@st.composite
def expressions(draw, depth: int = 0):
    if depth > 2 or draw(st.booleans()):
        expr = draw(st.one_of(ROOTS, INTS))
        for t in draw(st.lists(TRAILERS, max_size=4)):
            expr = f"({expr}){t}"  # parenthesized: a trailer after a filter or a number still parses
        return expr
    left, right = draw(expressions(depth + 1)), draw(expressions(depth + 1))
    return f"({left}{draw(OPS)}{right})"


def _fill(pattern: str, *parts: str) -> str:
    """``pattern`` with each ``@`` replaced by the next part (Jinja's own braces stay as they are)."""
    pieces = pattern.split("@")
    return "".join(p + q for p, q in zip(pieces, (*parts, ""), strict=True))


def _stmt(pattern: str, *strategies: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(*strategies).map(lambda parts: _fill(pattern, *parts))


def _statements(body: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    e = expressions()
    return st.one_of(
        _stmt("{{ @ }}", e),
        _stmt("{% for x in @ %}@{% endfor %}", e, body),
        _stmt("{% for m in @ %}@{% endfor %}", e, body),
        _stmt("{% if @ %}@{% else %}@{% endif %}", e, body, body),
        _stmt("{% set ns = namespace(v=@) %}", e),
        _stmt("{% set ns.v = @ %}", e),
        _stmt("{% macro f(a) %}@{% endmacro %}{{ f(@) }}", body, e),
        st.just("{% macro f(a) %}{{ f(a) }}{{ f(a) }}{% endmacro %}{{ f(1) }}"),
        _stmt("{% set x %}@{% endset %}{{ x ~ x }}", body),
        _stmt("{% filter upper %}@{% endfilter %}", body),
        _stmt("{% for x in @ recursive %}{{ loop(@) }}{% endfor %}", e, e),
        _stmt("{% for i in range(100000) %}{% for j in range(100000) %}@{% endfor %}{% endfor %}", body),
        st.text(st.sampled_from("{}%#-+ab\n~|()"), max_size=12),  # broken syntax, now and then
    )


def _sequence(body: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(_statements(body), min_size=1, max_size=4).map("".join)


TEMPLATES = st.recursive(st.text("ab \n", max_size=5), _sequence, max_leaves=12)


def _render(source: str, conv=CONV) -> str | None:
    try:
        out = ChatTemplate(source, {"bos_token": "<s>"}, budget=SMALL).render(conv, add_generation_prompt=True)
    except TemplateRenderError as e:
        assert CANARY not in str(e)
        return None
    assert len(out) <= SMALL.max_chars
    assert CANARY not in out
    return out


@given(TEMPLATES)
def test_grammar_templates_end_in_text_or_a_template_error(source):
    _render("{% set ns = namespace(v=0) %}" + source)


@given(st.text(max_size=200))
def test_any_text_is_a_template_or_a_template_error(source):
    _render(source)


@given(st.one_of(st.integers(), st.floats(), st.binary(), st.lists(st.text()),
                 st.dictionaries(st.text(), st.text()), st.none(), st.booleans()))
def test_a_template_of_the_wrong_type_is_a_template_error(source):
    with pytest.raises(TemplateRenderError, match="must be a string"):
        ChatTemplate(source)


CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONTENT = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["{{", "}}", "{%", "%}", "{#", "__class__",
                                                                   "raise_exception('x')", "\n"])),
                   max_size=8).map("".join)


@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), CONTENT), min_size=1, max_size=6))
def test_message_content_is_data_not_template_code(turns):
    conv = tuple(Message(role, text) for role, text in turns)
    out = ChatTemplate(CHATML).render(conv, add_generation_prompt=True)
    assert out == "".join(f"<|im_start|>{r}\n{t}<|im_end|>\n" for r, t in turns) + "<|im_start|>assistant\n"
