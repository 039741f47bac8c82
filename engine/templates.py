"""Chat templates, rendered safely.

A model's chat template is code that came with a download: it is rendered in
Jinja's immutable sandbox (no attribute access to Python internals, no mutation of
the objects passed in), with the few helpers Hugging Face templates expect.

Models without a template (BERT-style cross-encoders) see the conversation as plain
text, see :func:`conversation_as_text`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import ModelError
from engine.types import Message


class TemplateRenderError(ModelError):
    """The model's chat template failed on this conversation."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Hugging Face's variant: keeps non-ASCII characters as they are.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(source: str):  # noqa: ANN202 - jinja2.Template
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise TemplateRenderError(f"the model's chat template does not parse: {e}") from e


class ChatTemplate:
    """A compiled chat template plus the special tokens it refers to."""

    def __init__(self, source: str, special_tokens: dict[str, str | None] | None = None) -> None:
        self.source = source
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self._template = _compile(source)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        try:
            return self._template.render(
                messages=[m.to_dict() for m in messages],
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except TemplateError as e:
            raise TemplateRenderError(f"the model's chat template refused this conversation: {e}") from e


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
