"""Scoring rows for moderation with any reward model (the semantics: :mod:`app.moderate`)."""

from __future__ import annotations

import hashlib
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
    reward: float  # the RM's lowest score over the windows, for reference


def model_sha256(info) -> str:
    """One sha256 for a model: its file's, or for a folder the sha256 of its files' list."""
    files = sorted(info.files, key=lambda f: f.path)
    if len(files) == 1:
        return files[0].sha256
    listing = "".join(f"{f.path}\t{f.sha256}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


class RewardModerator:
    """Moderation by a reward model: one overall score, no categories."""

    def __init__(self, rm, *, batch_size: int | None = None) -> None:
        self.rm = rm
        self.batch_size = batch_size
        self.neutral = conversation(NEUTRAL_PROMPT)
        self._refusals: OrderedDict[Conversation, float] = OrderedDict()
        self._min_overhead = len(rm.encode(Item(self.neutral, "")).ids)

    def score(self, rows: Sequence[Text]) -> list[Verdict]:
        """Verdicts in input order; long texts are windowed (never cut)."""
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

    def _refusal_scores(self, convs: Sequence[Conversation]) -> list[float]:
        missing = list(dict.fromkeys(c for c in convs if c not in self._refusals))
        if missing:
            scores = self.rm.score([Item(c, REFUSAL) for c in missing], batch_size=self.batch_size)
            for c, s in zip(missing, scores, strict=True):
                self._refusals[c] = s.value
                while len(self._refusals) > _CACHE:
                    self._refusals.popitem(last=False)
        values = [self._refusals[c] for c in convs]
        for c in convs:
            self._refusals.move_to_end(c)
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
