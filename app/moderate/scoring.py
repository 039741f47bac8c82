"""Scoring rows for moderation with any reward model (the semantics: :mod:`app.moderate`)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from app.moderate import windows
from engine.errors import InputTooLongError, ModelError
from engine.types import Conversation, Item, conversation, sigmoid

#: the reference refusal every text is compared with (changing it moves every score: it is
#: part of :data:`SEMANTICS_VERSION`, which thresholds record)
REFUSAL = "I'm sorry, but I can't help with that."
#: the prompt a text without context is scored as the answer to
NEUTRAL_PROMPT = "Write something."
#: names the reading of RM scores above; stored with thresholds and results
SEMANTICS_VERSION = "rm-vs-refusal-1"
#: the first output of a multi-output moderation head (the built-in moderation model's): its
#: outputs are logits, ``overall`` and then OpenAI category names, read as sigmoid probabilities
OVERALL = "overall"
#: names the reading of a multi-output head's scores (sigmoid of its logits); thresholds fitted
#: on one reading mean nothing on the other, so each records which it is
HEAD_SEMANTICS = "moderation-head-sigmoid-1"
#: tokens kept free beside a window for the conversation (the engine cuts it from its start)
_CONTEXT_SHARE = 0.25
#: tries at shrinking a window whose decoded text re-tokenizes longer than planned
_SHRINK_TRIES = 3
_CACHE = 1024  # refusal scores kept, one per distinct context


@dataclass(frozen=True, slots=True)
class Text:
    """One row to moderate: the text, and the conversation it answers (None: a text alone)."""

    text: str
    context: Conversation | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A row's scores: overall (higher = more unsafe), per category (None: not scored)."""

    score: float
    category_scores: dict[str, float | None]
    windows: int
    reward: float  # the RM's lowest score over the windows (a moderation head: its highest overall logit)


def model_sha256(info) -> str:
    """One sha256 for a model: its file's, or for a folder the sha256 of its files' list."""
    from engine.files import model_digest

    return model_digest(info.files)


def category_heads(rm) -> tuple[str, ...] | None:
    """The per-category outputs of a multi-output moderation head, or None (a reward model).

    A model qualifies when its backend names several outputs, the first :data:`OVERALL` and
    the rest OpenAI category names (``output_names``: ONNX arbiter.json ``outputs``, GGUF
    ``{arch}.classifier.output_labels``).
    """
    from app.moderate.categories import CATEGORIES

    names = tuple(getattr(rm, "output_names", ()) or ())
    if len(names) > 1 and names[0] == OVERALL and set(names[1:]) <= set(CATEGORIES):
        return names
    return None


class RewardModerator:
    """Moderation by a reward model: one overall score, no categories.

    Given a multi-output moderation head (:func:`category_heads`: the built-in moderation
    model), it scores that model's way instead: every output is a logit, read as
    ``sigmoid``; ``score`` is the ``overall`` output's probability and each category the
    probability of its output, the maximum over windows for a long text. One class for both,
    so every caller (the job, report, calibrate, serve, Ray) moderates with either kind.
    """

    def __init__(self, rm, *, batch_size: int | None = None) -> None:
        self.rm = rm
        self.batch_size = batch_size
        self.neutral = conversation(NEUTRAL_PROMPT)
        self._refusals: OrderedDict[Conversation, float] = OrderedDict()
        self._min_overhead = len(rm.encode(Item(self.neutral, "")).ids)
        self.heads = category_heads(rm)
        #: what this moderator's scores mean (recorded with thresholds and results)
        self.semantics = HEAD_SEMANTICS if self.heads is not None else SEMANTICS_VERSION

    def score(self, rows: Sequence[Text]) -> list[Verdict]:
        """Verdicts in input order; long texts are windowed (never cut)."""
        if self.heads is not None:
            return self._score_heads(rows)
        convs = [r.context or self.neutral for r in rows]
        first = self.rm.score([Item(c, r.text) for c, r in zip(convs, rows, strict=True)],
                              batch_size=self.batch_size, on_too_long="skip")
        refusal = self._refusal_scores(convs)
        out = []
        for row, conv, s, ref in zip(rows, convs, first, refusal, strict=True):
            rewards = [s.value] if s.skipped is None else self._window_rewards(conv, row.text)
            worst = min(rewards)
            score = sigmoid(ref - worst)
            if not math.isfinite(score):
                raise ModelError("the model gave a non-finite score; check the file with `arbiter verify`")
            out.append(Verdict(score, {}, len(rewards), worst))
        return out

    def _score_heads(self, rows: Sequence[Text]) -> list[Verdict]:
        """A multi-output head: every row's (or window's) outputs in one call, max over windows."""
        parts: list[list[Item]] = []
        for row in rows:
            conv = row.context or self.neutral
            item = Item(conv, row.text)
            try:
                self.rm.encode(item)
                parts.append([item])
            except InputTooLongError:
                parts.append(self._window_items(conv, row.text))
        flat = [it for p in parts for it in p]
        logits = self.rm.outputs(flat, batch_size=self.batch_size) if flat else []
        out, k = [], 0
        for p in parts:
            rows_logits = logits[k:k + len(p)]
            k += len(p)
            worst = [max(float(r[j]) for r in rows_logits) for j in range(len(self.heads))]
            if not all(math.isfinite(v) for v in worst):
                raise ModelError("the model gave a non-finite score; check the file with `arbiter verify`")
            probs = [sigmoid(v) for v in worst]
            out.append(Verdict(probs[0], dict(zip(self.heads[1:], probs[1:], strict=True)), len(p), worst[0]))
        return out

    def _window_items(self, conv: Conversation, text: str) -> list[Item]:
        """Windows of ``text`` that each fit beside ``conv`` (shrunk until every one encodes)."""
        size = self.window_size(conv)
        for _ in range(_SHRINK_TRIES):
            items = [Item(conv, p) for p in windows.split(self.rm.encoder.tokenizer, text, size)]
            try:
                for it in items:
                    self.rm.encode(it)
                return items
            except InputTooLongError:
                size = max(1, int(size * 0.8))
        raise InputTooLongError(f"the text could not be split into windows of the model's "
                                f"{self.rm.encoder.max_length} tokens")

    def _refusal_scores(self, convs: Sequence[Conversation]) -> list[float]:
        missing = list(dict.fromkeys(c for c in convs if c not in self._refusals))
        if missing:
            scores = self.rm.score([Item(c, REFUSAL) for c in missing], batch_size=self.batch_size)
            for c, s in zip(missing, scores, strict=True):
                self._refusals[c] = s.value
        values = [self._refusals[c] for c in convs]
        for c in convs:
            self._refusals.move_to_end(c)
        # evicted only now: evicting while inserting could drop a context this batch still needs
        # (cached in an earlier batch, so the oldest): a KeyError on DiaSafety's test split
        while len(self._refusals) > _CACHE:
            self._refusals.popitem(last=False)
        return values

    def window_size(self, conv: Conversation) -> int:
        """Tokens a window may take beside ``conv`` (whose own tokens may be cut to fit)."""
        max_len = self.rm.encoder.max_length
        ctx = len(self.rm.encode(Item(conv, "")).ids)
        reserved = min(ctx, self._min_overhead + int(max_len * _CONTEXT_SHARE))
        return max(1, max_len - reserved - 2)  # 2: a merge at the boundary may add a token

    def _window_rewards(self, conv: Conversation, text: str) -> list[float]:
        size = self.window_size(conv)
        for _ in range(_SHRINK_TRIES):
            parts = windows.split(self.rm.encoder.tokenizer, text, size)
            scores = self.rm.score([Item(conv, p) for p in parts], batch_size=self.batch_size,
                                   on_too_long="skip")
            if all(s.skipped is None for s in scores):
                return [s.value for s in scores]
            size = max(1, int(size * 0.8))
        raise InputTooLongError(f"the text could not be split into windows of the model's "
                                f"{self.rm.encoder.max_length} tokens")
