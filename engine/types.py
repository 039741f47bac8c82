"""The one conversation format, and the results every Scorer returns.

A conversation is a list of ``{role, content}`` messages (roles: system, user,
assistant); the thing being scored is a separate ``response`` string, the next
assistant turn. Every loader and every backend speaks this format.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import InputError

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


Conversation = tuple[Message, ...]


def sigmoid(x: float) -> float:
    """Numerically safe logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def conversation(
    messages: Iterable[Mapping[str, Any] | Message] | str, *, system: str | None = None
) -> Conversation:
    """Build and validate a conversation.

    A bare string is a single user prompt. ``system`` prepends a system message.

    >>> conversation("Hi")
    (Message(role='user', content='Hi'),)
    """
    if isinstance(messages, str):
        msgs: list[Message] = [Message("user", messages)]
    else:
        msgs = []
        for i, m in enumerate(messages):
            msgs.append(_message(m, f"conversation[{i}]"))
    if system is not None:
        if not isinstance(system, str):  # a dict or a number would be rendered as its repr
            raise InputError(f"must be a string; got {type(system).__name__}", field="system")
        msgs.insert(0, Message("system", system))
    if not msgs:
        raise InputError("a conversation needs at least one message", field="conversation")
    if msgs[-1].role == "assistant":
        raise InputError(
            "the last message is an assistant turn; the response to score goes in "
            "'response', not in the conversation",
            field=f"conversation[{len(msgs) - 1}].role",
        )
    return tuple(msgs)


def _message(m: Mapping[str, Any] | Message, where: str) -> Message:
    if isinstance(m, Message):
        return m
    if not isinstance(m, Mapping):
        raise InputError(f"expected an object with role and content, got {type(m).__name__}", field=where)
    role, content = m.get("role"), m.get("content")
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}; got {role!r}", field=f"{where}.role")
    if not isinstance(content, str):
        raise InputError(f"content must be a string; got {type(content).__name__}", field=f"{where}.content")
    return Message(role, content)


@dataclass(frozen=True, slots=True)
class Item:
    """One thing to score: a conversation and the response that follows it."""

    conversation: Conversation
    response: str

    @staticmethod
    def of(conv: Iterable[Mapping[str, Any] | Message] | str, response: str) -> Item:
        if not isinstance(response, str):
            raise InputError(f"response must be a string; got {type(response).__name__}", field="response")
        return Item(conversation(conv), response)


@dataclass(frozen=True, slots=True)
class Score:
    """A reward (a Bradley-Terry logit: only differences between scores mean anything).

    ``cut_tokens`` counts conversation tokens removed from the start to fit the
    model's context; the response is never cut.
    """

    value: float
    n_tokens: int
    cut_tokens: int = 0
    #: why the item was not scored (value is NaN); only with ``on_too_long="skip"``
    skipped: str | None = None
    #: the model has a length correction that was not applied, because the response's extent
    #: was unknown (``Scorer.score_texts`` without a prompt that prefixes the text): ``value`` is
    #: the raw output, not comparable with length-controlled scores of the same model
    uncorrected: bool = False
    #: windows the response was scored in (``on_too_long="window"``; 1: it fit the context)
    windows: int = 1
    #: the long-input policy it was scored under, e.g. ``window-mean/384/stride-288``; None:
    #: no windows were allowed (a response too long was an error or skipped)
    policy: str | None = None

    def __float__(self) -> float:
        return self.value


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two responses to one conversation, scored by one model."""

    score_a: Score
    score_b: Score
    prompt_shared: bool = False

    @property
    def margin(self) -> float:
        """score_a - score_b, in reward units (logits)."""
        return self.score_a.value - self.score_b.value

    @property
    def p_a_better(self) -> float:
        """P(A better than B) under the Bradley-Terry model: sigmoid(score_a - score_b)."""
        return sigmoid(self.margin)

    @property
    def winner(self) -> Literal["A", "B", "tie"]:
        return "A" if self.margin > 0 else "B" if self.margin < 0 else "tie"

    def to_dict(self) -> dict[str, Any]:
        return {
            "score_a": self.score_a.value,
            "score_b": self.score_b.value,
            "margin": self.margin,
            "p_a_better": self.p_a_better,
            "winner": self.winner,
            "cut_tokens": [self.score_a.cut_tokens, self.score_b.cut_tokens],
            "prompt_shared": self.prompt_shared,
        }


@dataclass(frozen=True, slots=True)
class RankedCandidate:
    index: int  # position in the input list
    response: str
    score: Score
    p_best_vs_this: float  # P(top candidate better than this one); 0.5 for the top one


@dataclass(frozen=True, slots=True)
class Ranking:
    """Candidates ordered best first."""

    candidates: tuple[RankedCandidate, ...]
    prompt_shared: bool = False

    @property
    def best(self) -> RankedCandidate:
        return self.candidates[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranking": [
                {
                    "rank": r + 1,
                    "index": c.index,
                    "score": c.score.value,
                    "margin_to_best": c.score.value - self.best.score.value,
                    "p_best_better": c.p_best_vs_this,
                    "cut_tokens": c.score.cut_tokens,
                    "response": c.response,
                }
                for r, c in enumerate(self.candidates)
            ],
            "best_index": self.best.index,
            "prompt_shared": self.prompt_shared,
        }


def window_fields(scores: Sequence[Score]) -> dict[str, Any]:
    """``windows`` per score (in the order given) and the ``policy``, for a JSON record; empty
    when no window policy was in force, so records made without one are as before."""
    policy = next((s.policy for s in scores if s.policy), None)
    return {"windows": [s.windows for s in scores], "policy": policy} if policy else {}


def ranking_from_scores(responses: Sequence[str], scores: Sequence[Score], *, prompt_shared: bool = False) -> Ranking:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i].value, i))
    top = scores[order[0]].value
    return Ranking(
        tuple(RankedCandidate(i, responses[i], scores[i], sigmoid(top - scores[i].value)) for i in order),
        prompt_shared=prompt_shared,
    )


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a loaded model is, in the words a user needs to trust a score."""

    name: str
    format: Literal["onnx", "gguf", "torch"]
    architecture: str  # e.g. Qwen3ForSequenceClassification
    pooling: str  # "last" (decoders) or "cls" (BERT-style, through the pooler)
    max_length: int  # tokens
    chat_template: str | None  # None: text-pair encoding (cross-encoders)
    dtype: str  # fp32, int8, f16, q8_0, ...
    files: tuple[FileInfo, ...] = ()
    provider: str = "cpu"
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: length control: every score is the model's output minus this x log(1 + response
    #: characters) (engine/scorer.py); 0 for most models
    length_correction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format,
            "architecture": self.architecture,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "chat_template": self.chat_template,
            "dtype": self.dtype,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "provider": self.provider,
            **({"extra": dict(self.extra)} if self.extra else {}),
            **({"length_correction": self.length_correction} if self.length_correction else {}),
        }
