"""The Scorer: one API for every model in every format.

A backend implements one method, :meth:`Scorer._forward`, which scores a batch of
already-encoded sequences. Everything users call is built on top of it here:

* :meth:`Scorer.score` / :meth:`Scorer.iter_scores`: batched, streaming over any
  iterable (a window of items is read, grouped by length so padding waste stays
  small, scored, and yielded back in input order), with a progress callback and a
  cancel token;
* :meth:`Scorer.compare`: two responses, their margin and P(A better than B);
* :meth:`Scorer.rank`: Best-of-N, best first.

Backends that can share the prompt between candidates (GGUF, ONNX with past)
override :meth:`Scorer._score_shared_prompt`.

Length control: a model whose metadata carries ``length_correction`` (beta) scores
``output - beta * log(1 + response characters)``, the same in every format. Beta is fitted
on the model's training pairs so that reward differences within a pair stop following
length differences (``trainer/bt/length_control.py``); the built-in default model has one.
Set ``scorer.length_control = False`` for the raw output.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from engine.encoding import Encoded, Encoder
from engine.errors import Cancelled, InputError, InputTooLongError
from engine.types import (
    Comparison,
    Conversation,
    Item,
    ModelInfo,
    Ranking,
    Score,
    conversation,
    ranking_from_scores,
)

Progress = Callable[[int, int | None], None]  # (items done, items in total or None when streaming)


class CancelToken:
    """Set it from any thread; the scoring job stops before its next batch."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("scoring was cancelled")


@dataclass(frozen=True, slots=True)
class Batch:
    """Right-padded arrays for one forward pass (shape [batch, longest])."""

    input_ids: np.ndarray  # int64
    attention_mask: np.ndarray  # int64, 1 on real tokens
    token_type_ids: np.ndarray | None  # int64, cross-encoders only
    lengths: np.ndarray  # real tokens per row


def pad_batch(encoded: Sequence[Encoded], pad_id: int, *, side: str = "right") -> Batch:
    """Pad a list of encodings into one batch. ``side`` exists for the invariance tests."""
    n, longest = len(encoded), max(len(e.ids) for e in encoded)
    ids = np.full((n, longest), pad_id, dtype=np.int64)
    mask = np.zeros((n, longest), dtype=np.int64)
    types = np.zeros((n, longest), dtype=np.int64) if encoded[0].type_ids is not None else None
    for r, e in enumerate(encoded):
        k = len(e.ids)
        sl = slice(0, k) if side == "right" else slice(longest - k, longest)
        ids[r, sl] = e.ids
        mask[r, sl] = 1
        if types is not None and e.type_ids is not None:
            types[r, sl] = e.type_ids
    return Batch(ids, mask, types, np.array([len(e.ids) for e in encoded], dtype=np.int64))


def _as_item(x: Item | tuple) -> Item:
    if isinstance(x, Item):
        return x
    if isinstance(x, tuple) and len(x) == 2:
        return Item.of(x[0], x[1])
    raise InputError(f"expected an Item or a (conversation, response) pair, got {type(x).__name__}")


class Scorer(ABC):
    """A loaded reward model. Subclasses: ONNX, GGUF, torch backends."""

    info: ModelInfo
    encoder: Encoder
    #: items per forward pass
    batch_size: int = 16
    #: padding side for decoders (their scores do not depend on it; tested). Cross-encoders
    #: always pad right: BERT's absolute position embeddings make left padding shift
    #: every position and change the score.
    padding_side: str = "right"

    # ---- what a backend implements ------------------------------------------------
    @abstractmethod
    def _forward(self, batch: Batch) -> np.ndarray:
        """One score per row, float64, shape [batch]."""

    def close(self) -> None:  # noqa: B027 - optional hook; most runtimes free on GC
        """Free runtime resources. Using the scorer afterwards is an error."""

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- scoring -------------------------------------------------------------------
    @property
    def length_control(self) -> bool:
        """Whether the model's length correction is applied (see the module docstring)."""
        return self.__dict__.get("_length_control", True)

    @length_control.setter
    def length_control(self, on: bool) -> None:
        """Off: raw outputs, and ``info.length_correction`` reads 0, so stored results say which they are."""
        beta = self.__dict__.setdefault("_model_beta", self.info.length_correction)
        self._length_control = bool(on)
        self.info = dataclasses.replace(self.info, length_correction=beta if on else 0.0)

    def length_term(self, response: str) -> float:
        """What length control subtracts from this response's output (0 without a correction)."""
        beta = self.info.length_correction
        return beta * math.log1p(len(response)) if beta else 0.0

    def encode(self, item: Item) -> Encoded:
        return self.encoder.encode(item)

    def _score_encoded(self, encoded: Sequence[Encoded], batch_size: int,
                       cancel: CancelToken | None) -> list[float]:
        """Score encodings in length-sorted batches; returns scores in input order."""
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        side = self.padding_side if self.encoder.kind == "chat" else "right"
        out = [0.0] * len(encoded)
        for start in range(0, len(order), batch_size):
            if cancel:
                cancel.raise_if_cancelled()
            rows = order[start:start + batch_size]
            values = self._forward(pad_batch([encoded[i] for i in rows], self.encoder.pad_token_id,
                                             side=side))
            for i, v in zip(rows, values, strict=True):
                out[i] = float(v)
        return out

    def iter_scores(
        self,
        items: Iterable[Item | tuple],
        *,
        batch_size: int | None = None,
        progress: Progress | None = None,
        cancel: CancelToken | None = None,
        total: int | None = None,
        window: int | None = None,
        on_too_long: str = "error",
    ) -> Iterator[Score]:
        """Score items lazily, in input order. Memory is bounded by ``window`` items.

        ``total`` is only passed on to ``progress`` (for a bar over a stream).
        ``on_too_long``: ``"error"`` raises :class:`InputTooLongError` for a response that
        alone exceeds the context; ``"skip"`` yields a NaN score with ``skipped`` set.
        """
        bs = batch_size or self.batch_size
        window = window or bs * 16
        if total is None and isinstance(items, Sequence):
            total = len(items)
        it = iter(items)
        done = 0
        while chunk := list(islice(it, window)):
            if cancel:
                cancel.raise_if_cancelled()
            encoded: list[Encoded | InputTooLongError] = []
            chunk = [_as_item(x) for x in chunk]
            for k, x in enumerate(chunk):
                try:
                    encoded.append(self.encode(x))
                except InputTooLongError as e:
                    e.item_index = done + k
                    if on_too_long != "skip":
                        raise
                    encoded.append(e)
            ok = [e for e in encoded if isinstance(e, Encoded)]
            values = iter(self._score_encoded(ok, bs, cancel))
            for e, x in zip(encoded, chunk, strict=True):
                if isinstance(e, Encoded):
                    yield Score(next(values) - self.length_term(x.response), len(e.ids), e.cut_tokens)
                else:
                    yield Score(math.nan, 0, 0, skipped=str(e))
            done += len(chunk)
            if progress:
                progress(done, total)

    def score(self, items: Iterable[Item | tuple], **kwargs) -> list[Score]:
        """Score every item; see :meth:`iter_scores` for the options."""
        return list(self.iter_scores(items, **kwargs))

    # ---- one conversation, several responses -----------------------------------------
    def _score_shared_prompt(self, conv: Conversation, responses: Sequence[str]) -> list[Score] | None:
        """Score responses that share one conversation, computing the prompt once.

        Returns None when the backend cannot (the caller falls back to full scoring).
        """
        return None

    #: whether rank/compare share the prompt when the caller does not say (shared_prompt=None)
    share_prompt_by_default: bool = True

    def _score_candidates(self, conv: Conversation, responses: Sequence[str],
                          shared: bool | None) -> tuple[list[Score], bool]:
        """``shared``: None = the model's default, True = share where the tokens allow, False = never."""
        if shared is None:
            shared = None if self.share_prompt_by_default else False
        if shared is not False:
            scores = self._score_shared_prompt(conv, responses)
            if scores is not None:
                return [Score(s.value - self.length_term(r), s.n_tokens, s.cut_tokens, s.skipped)
                        for s, r in zip(scores, responses, strict=True)], True
            # None: this format cannot share, or no candidate's tokens start with the prompt's
            # (a cut conversation, a merge across the boundary): full scoring, reported as such
        return self.score([Item(conv, r) for r in responses]), False

    def compare(self, conv: Conversation | Sequence | str, a: str, b: str, *,
                shared_prompt: bool | None = None) -> Comparison:
        """Score two responses to one conversation: margin and P(A better than B)."""
        conv = conversation(conv)
        (sa, sb), shared = self._score_candidates(conv, [a, b], shared_prompt)
        return Comparison(sa, sb, prompt_shared=shared)

    def rank(self, conv: Conversation | Sequence | str, candidates: Sequence[str], *,
             shared_prompt: bool | None = None) -> Ranking:
        """Best-of-N: candidates with their scores, best first (ties keep input order)."""
        if not candidates:
            raise InputError("rank needs at least one candidate", field="candidates")
        conv = conversation(conv)
        scores, shared = self._score_candidates(conv, list(candidates), shared_prompt)
        return ranking_from_scores(list(candidates), scores, prompt_shared=shared)

