"""Chat templates under a budget: every hostile or broken template is a TemplateRenderError.

Each case here ended in a traceback or a hang before the budget (issue 13, defect 4).
None of these tests times anything: the budget counts steps and characters, so a
runaway template is stopped after the same work on any machine.
"""

from __future__ import annotations

import threading

import pytest

from engine.errors import ModelError
from engine.templates import ChatTemplate, RenderBudget, TemplateRenderError
from engine.types import Message

CONV = (Message("system", "Be brief."), Message("user", "Hi"))
QWEN_LIKE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n"
             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def render(source, budget=None, conv=CONV):
    return ChatTemplate(source, budget=budget).render(conv, add_generation_prompt=True)


def refused(source, match, budget=None):
    with pytest.raises(TemplateRenderError, match=match) as e:
        render(source, budget)
    assert isinstance(e.value, ModelError)
    return str(e.value)


def test_ordinary_templates_render_as_before():
    assert render(QWEN_LIKE) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                 "<|im_start|>assistant\n")
    src = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}"
           "{{ ns.n }} {{ messages[-1]|tojson }} {{ '%s=%d'|format('a', 3) }} {{ 'a,b'.split(',')|join('+') }}"
           "{{ cycler('x', 'y').next() }}{% set j = joiner('|') %}{% for i in range(3) %}{{ j() }}{{ i }}{% endfor %}")
    assert render(src) == '2 {"role": "user", "content": "Hi"} a=3 a+bx0|1|2'


QWEN3_LIKE = """{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}{%- set content = message.content %}{%- else %}{%- set content = '' %}{%- endif %}
    {%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}
    {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}{% if loop.last %}[last of {{ loop.length }}, rev {{ loop.revindex }}]{% endif %}
    {%- if loop.index > 100 %}{% break %}{% endif %}
{%- endfor %}
{%- macro tree(n) %}{% if n > 0 %}({{ tree(n - 1) }}){% endif %}{% endmacro %}{{ tree(20) }}
{%- for x in [[1, [2, [3]]]] recursive %}{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}{% endif %}{% endfor %}
{{ messages|map(attribute='role')|join(',') }} {{ messages|selectattr('role', 'equalto', 'user')|list|length }}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif %}"""


def test_the_budget_changes_no_output():
    """Loops, loop.last/length/revindex, break, slices, namespaces, recursion within the
    limits, filters: the same text as Jinja's plain immutable sandbox."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    conv = (Message("system", "S"), Message("user", "Q1"), Message("assistant", "<think>hm</think>\n\nA1"),
            Message("user", "Q2"))
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    want = env.from_string(QWEN3_LIKE).render(messages=[m.to_dict() for m in conv], add_generation_prompt=True)
    assert render(QWEN3_LIKE, conv=conv) == want and "[last of 4, rev 1]" in want


@pytest.mark.parametrize(("source", "match"), [
    ("{{ range(10**9) }}", "OverflowError: Range too big"),
    ("{{ 1/0 }}", "ZeroDivisionError"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "calls nest deeper than 64"),
    ("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}", "calls nest deeper than 64"),
    ("{{ 'a' * 10**10 }}", "a repetition would be 10,000,000,000 characters"),
    ("{{ ['a' * 1000] * 10**6 }}", "a repetition would be"),
    ("{{ 'a'|center(10**9) }}", "width or count argument"),
    ("{{ '{:>1000000000}'.format(1) }}", "widths of a format string"),
    ("{{ '%1000000000s' % 1 }}", "widths of a format string"),
    ("{{ ('a' * 100000)|replace('a', 'b' * 100000) }}", "a replace would be"),
    ("{{ ('a' * 2000000)|list|join('-' * 3) }}", "a join would be"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "'~' concatenation"),
    ("{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
     "a number would need"),
    ("{% set big = 'a' * 1000000 %}{% set x %}{% for i in range(100) %}{{ big }}{% endfor %}{% endset %}",
     "captured output"),
    ("{% for i in range(100) %}{{ 'a' * 1000000 }}{% endfor %}", "the output would be"),
    ("{% set ns = namespace(l=[]) %}{% for i in range(5000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}",
     "nests too deeply"),
])
def test_runaway_and_failing_templates_are_model_errors(source, match):
    msg = refused(source, match)
    assert msg.startswith("the model's chat template failed on this conversation")


def test_a_nested_loop_of_ten_billion_iterations_stops_at_the_step_budget():
    src = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    refused(src, r"budget of 1,000,400 steps")  # 1,000,000 + 200 per message
    refused(src, r"budget of 1,400 steps", RenderBudget(max_steps=1000))


def test_the_budget_scales_with_the_conversation():
    """A long conversation may render a long prompt: the character budget is 8x its size."""
    long = (Message("user", "x" * (1 << 20)),)
    out = ChatTemplate(QWEN_LIKE + "{{ messages[0].content * 5 }}").render(long, add_generation_prompt=False)
    assert len(out) > 6 << 20
    with pytest.raises(TemplateRenderError, match="over the budget of 8,388,608"):
        ChatTemplate("{{ messages[0].content * 9 }}").render(long, add_generation_prompt=False)


@pytest.mark.parametrize("source", [
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('true') }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ (messages|attr('__class__')).__base__.__subclasses__() }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ range.__self__ }}",
    "{{ lipsum.__globals__ }}",
])
def test_ssti_payloads_never_reach_python(source):
    """The classic escapes fail (an error) or render nothing useful (an undefined)."""
    try:
        out = render(source)
    except TemplateRenderError as e:
        assert "unsafe" in str(e) or "undefined" in str(e)
    else:
        assert "class" not in out and "function" not in out and "module" not in out


@pytest.mark.parametrize(("source", "match"), [
    ("{% for x in y %}", r"does not parse \(template line 1\): Unexpected end of template"),
    ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "does not parse: it nests too deeply"),
    ("{% if 1 %}" * 300 + "x" + "{% endif %}" * 300, "does not parse"),
    ("{{ " + "9" * 5000 + " }}", "does not parse: ValueError: Exceeds the limit"),
    ("x" * ((1 << 20) + 1), "over the 1,048,576 accepted"),
])
def test_templates_that_do_not_compile(source, match):
    with pytest.raises(TemplateRenderError, match=match):
        ChatTemplate(source)


@pytest.mark.parametrize("source", [123, {"name": "default", "template": "x"}, ["x"], None, b"{{ x }}"])
def test_a_template_that_is_not_a_string_is_a_model_error(source):
    with pytest.raises(TemplateRenderError, match=f"must be a string; got {type(source).__name__}"):
        ChatTemplate(source, origin="tokenizer_config.json")
    with pytest.raises(TemplateRenderError, match="^tokenizer_config.json: "):
        ChatTemplate(source, origin="tokenizer_config.json")


def test_the_error_names_the_template_line():
    src = "line one\n{% for m in messages %}\n{{ m.content }}\n{{ 1 // 0 }}\n{% endfor %}"
    with pytest.raises(TemplateRenderError, match=r"\(template line 4\): ZeroDivisionError"):
        render(src)


def test_budgets_hold_in_worker_threads():
    """The GUI renders from worker threads: the budget is per render, per thread."""
    results: dict[str, object] = {}

    def work(name, source):
        try:
            results[name] = render(source)
        except TemplateRenderError as e:
            results[name] = e

    threads = [threading.Thread(target=work, args=(f"bomb{i}", "{% for i in range(100000) %}"
                                                   "{% for j in range(100000) %}{% endfor %}{% endfor %}"))
               for i in range(2)]
    threads += [threading.Thread(target=work, args=(f"ok{i}", QWEN_LIKE)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(results[f"bomb{i}"], TemplateRenderError) for i in range(2))
    assert all(isinstance(results[f"ok{i}"], str) for i in range(2))
