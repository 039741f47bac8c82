"""The Scorer: one API for every model in every format.

A backend implements one method, :meth:`Scorer._forward`, which scores a batch of
already-encoded sequences. Everything users call is built on top of it here:

* :meth:`Scorer.score` / :meth:`Scorer.iter_scores`: batched, streaming over any
  iterable (a window of items is read, grouped by length so padding waste stays
  small, scored, and yielded back in input order), with a progress callback and a
  cancel token;
* :meth:`Scorer.compare`: two responses, their margin and P(A better than B);
* :meth:`Scorer.rank`: Best-of-N, best first.

Prompt sharing (Best-of-N, compare) is decided here, once for every backend: the
candidates are encoded, a candidate shares only when the conversation's own tokens
prefix its tokenization and nothing was cut, and every other candidate is scored in
full, so shared scores equal full scoring. A backend that can compute a prompt once
(GGUF, ONNX with its with-past graph) passes ``prompt_sharing=True`` to the
constructor and implements :meth:`Scorer._score_tails`.

Length control: a model whose metadata carries ``length_correction`` (beta) scores
``output - beta * log(1 + response characters)``, the same in every format. Beta is fitted
on the model's training pairs so that reward differences within a pair stop following
length differences (``trainer/bt/length_control.py``); the built-in default model has one.
Set ``scorer.length_control = False`` for the raw output.
"""

from __future__ import annotations

import dataclasses
import logging
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

log = logging.getLogger(__name__)

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
    """A loaded reward model. Subclasses: ONNX, GGUF, torch backends.

    A backend opens its runtime, builds its :class:`Encoder` and :class:`ModelInfo`, then
    calls ``super().__init__(info, encoder, ...)``; every attribute the shared code reads is
    set there, so no scorer is ever half made.
    """

    #: padding side for decoders (their scores do not depend on it; tested). Cross-encoders
    #: always pad right: BERT's absolute position embeddings make left padding shift
    #: every position and change the score.
    padding_side: str = "right"

    def __init__(self, info: ModelInfo, encoder: Encoder, *, batch_size: int = 16,
                 prompt_sharing: bool = False, share_prompt_by_default: bool = True) -> None:
        """``prompt_sharing``: this backend implements :meth:`_score_tails` for this model.
        ``share_prompt_by_default``: rank/compare share when the caller does not say
        (``shared_prompt=None``); False where sharing moves scores (ONNX dynamic int8)."""
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}", field="batch_size")
        self.info = info
        self.encoder = encoder
        #: items per forward pass
        self.batch_size = batch_size
        self.prompt_sharing = prompt_sharing
        self.share_prompt_by_default = share_prompt_by_default
        self._model_beta = info.length_correction  # the model's own beta, kept while control is off
        self._length_control = True

    # ---- what a backend implements ------------------------------------------------
    @abstractmethod
    def _forward(self, batch: Batch) -> np.ndarray:
        """One score per row, float64, shape [batch]."""

    def _score_tails(self, prompt: Sequence[int], tails: Sequence[Sequence[int]]) -> list[float]:
        """Raw outputs (before length control) of ``prompt + tail`` for each tail, the prompt computed once.

        Called only when the constructor got ``prompt_sharing=True``. ``prompt`` is the
        conversation's token ids (BOS included, as the encoder makes them); every tail is
        non-empty and ``prompt + tail`` is exactly a candidate's full tokenization with
        trailing pad ids removed, so its last token is the one full scoring reads. Each value
        must equal full scoring of ``prompt + tail`` (the sharing tests hold backends to it).
        Scorer has checked the boundary and scores the other candidates itself.
        """
        raise NotImplementedError(f"{type(self).__name__} does not share prompts")

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
        return self._length_control

    @length_control.setter
    def length_control(self, on: bool) -> None:
        """Off: raw outputs, and ``info.length_correction`` reads 0, so stored results say which they are."""
        self._length_control = bool(on)
        self.info = dataclasses.replace(self.info, length_correction=self._model_beta if on else 0.0)

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
    def _scored_ids(self, e: Encoded) -> list[int]:
        """The ids up to the token the score is read from: trailing pad ids dropped (pad == EOS
        in many chat models, and the classifier reads the last non-pad token)."""
        ids = list(e.ids)
        pad = self.encoder.pad_token_id
        while len(ids) > 1 and ids[-1] == pad:
            ids.pop()
        return ids

    def _score_shared_prompt(self, conv: Conversation, responses: Sequence[str]) -> list[Score] | None:
        """Score responses that share one conversation, computing the prompt once.

        A candidate shares only when the prompt's tokens prefix its own tokenization and
        nothing was cut (a BPE merge across the boundary, or truncation, breaks that); the
        others are scored in full, so every score equals full scoring. Raw outputs (the caller
        applies length control). None when the model cannot share (no hook, a cross-encoder,
        which attends both ways) or no candidate's tokens start with the prompt's.
        """
        if not self.prompt_sharing or self.encoder.kind != "chat":
            return None
        items = [Item(conv, r) for r in responses]
        encoded = [self.encode(it) for it in items]
        prompt = list(self.encoder.prompt_ids(items[0]))
        p = len(prompt)
        ids = [self._scored_ids(e) for e in encoded]
        ok = [i for i, (e, t) in enumerate(zip(encoded, ids, strict=True))
              if not e.cut_tokens and len(t) > p and t[:p] == prompt]
        if not ok:
            return None
        scores = dict(zip(ok, self._score_tails(prompt, [ids[i][p:] for i in ok]), strict=True))
        rest = [i for i in range(len(encoded)) if i not in scores]
        if rest:
            log.debug("%d candidate(s) cross the prompt's token boundary; scored in full", len(rest))
            scores |= dict(zip(rest, self._score_encoded([encoded[i] for i in rest], self.batch_size, None),
                               strict=True))
        return [Score(scores[i], len(e.ids), e.cut_tokens) for i, e in enumerate(encoded)]

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

