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

from engine.encoding import Encoded, Encoder, window_starts
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


#: padded tokens per forward pass (rows x longest row), the default of ``Scorer.batch_tokens``.
#: Measured on the default MiniLM, int8 and fp32, 2 threads, 256 real AlpacaEval rows, batch 16:
#: a cap of 1024 scored 1.21x (int8) and 1.24x (fp32) faster than none, 2048 and 4096 less
#: (2026-12-01; `bench/throughput.py` times int8 with and without it). Past it a bigger batch is no faster per row (attention's
#: [rows, heads, L, L] tensors leave the cache), so long rows go in small batches, short ones full.
BATCH_TOKENS = 1024
#: a row more than this many times longer than its batch's first row starts a new batch: the
#: rows sorted by length still spread widely in a small window, and every row pads to the longest
MAX_LENGTH_RATIO = 1.25


def length_batches(lengths: Sequence[int], batch_size: int, batch_tokens: int | None = BATCH_TOKENS,
                   max_ratio: float = MAX_LENGTH_RATIO) -> Iterator[list[int]]:
    """Row indices in batches for padded forward passes, shortest rows first.

    A batch holds at most ``batch_size`` rows and, past its first row, at most ``batch_tokens``
    padded tokens, and no row longer than ``max_ratio`` times its first. Scores do not depend
    on the batch (tested), so this changes speed only.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for i in order:
        n = lengths[i]
        if batch and (len(batch) >= batch_size or n > max_ratio * lengths[batch[0]]
                      or (batch_tokens is not None and (len(batch) + 1) * n > batch_tokens)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


#: what ``on_too_long`` may be: stop, a NaN score, or windows over the response
ON_TOO_LONG = ("error", "skip", "window")
#: how window scores (raw outputs) become one score; the order a long response is read in
WINDOW_AGGS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": lambda v: math.fsum(v) / len(v),
    "min": min,
    "max": max,
    "first": lambda v: v[0],
    "last": lambda v: v[-1],
}
#: the default aggregation: the best measured on the dev benchmarks' windowed records (5 of 7
#: columns, 51.1% on average against 47.1% for mean; bench/results/long_inputs.md). It rides
#: length (more windows, more chances at a high one): RM-Bench hard is its worst column
WINDOW_AGG = "max"
#: a window's share of the context, by default: the rest (a quarter, 125 tokens of MiniLM's 512)
#: holds the conversation, cut from its start, as for any row
WINDOW_SHARE = 0.75
#: share of a window repeated in the next one by default (a quarter, as moderation's windows)
WINDOW_OVERLAP = 0.25


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """How a response longer than the context is scored: windows of ``size`` response tokens
    every ``stride`` tokens, each beside the conversation, their raw outputs combined by ``agg``."""

    agg: str
    size: int  # response tokens per window
    stride: int  # tokens between window starts

    @property
    def name(self) -> str:
        """What every score made under it records, e.g. ``window-mean/384/stride-288``."""
        return f"window-{self.agg}/{self.size}/stride-{self.stride}"

    def starts(self, n_tokens: int) -> list[int]:
        return window_starts(n_tokens, self.size, self.stride)


def _check_policy(on_too_long: str, window_agg: str) -> None:
    if on_too_long not in ON_TOO_LONG:
        raise InputError(f"{on_too_long!r}: expected one of {', '.join(ON_TOO_LONG)}", field="on_too_long")
    if window_agg not in WINDOW_AGGS:
        raise InputError(f"{window_agg!r}: expected one of {', '.join(WINDOW_AGGS)}", field="window_agg")


def _text_rows(texts: Sequence[str], prompts: Sequence[str | None] | None
               ) -> tuple[list[str], list[str | None]]:
    """``score_texts``'s arguments checked: a list of strings, and one prompt (or None) per text."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InputError(f"expected a list of strings, got {type(texts).__name__}", field="texts")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"must be a string; got {type(t).__name__}", field=f"texts[{i}]")
    if prompts is None:
        return texts, [None] * len(texts)
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise InputError(f"expected a list of strings, got {type(prompts).__name__}", field="prompts")
    prompts = list(prompts)
    if len(prompts) != len(texts):
        raise InputError(f"{len(prompts)} prompts for {len(texts)} texts: give one per text (or none)",
                         field="prompts")
    for i, p in enumerate(prompts):
        if p is not None and not isinstance(p, str):
            raise InputError(f"must be a string or null; got {type(p).__name__}", field=f"prompts[{i}]")
    return texts, prompts


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
        #: items per forward pass, at most
        self.batch_size = batch_size
        #: padded tokens per forward pass, at most (a long row still goes alone); None: no cap
        self.batch_tokens: int | None = BATCH_TOKENS
        self.prompt_sharing = prompt_sharing
        self.share_prompt_by_default = share_prompt_by_default
        self._model_beta = info.length_correction  # the model's own beta, kept while control is off
        self._length_control = True
        self._turn_ends: tuple[str, ...] | None = None  # score_texts: what follows a response

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
        side = self.padding_side if self.encoder.kind == "chat" else "right"
        out = [0.0] * len(encoded)
        for rows in length_batches([len(e.ids) for e in encoded], batch_size, self.batch_tokens):
            if cancel:
                cancel.raise_if_cancelled()
            values = self._forward(pad_batch([encoded[i] for i in rows], self.encoder.pad_token_id,
                                             side=side))
            for i, v in zip(rows, values, strict=True):
                out[i] = float(v)
        return out

    @property
    def windows_long_responses(self) -> bool:
        """Whether ``on_too_long="window"`` applies: cross-encoders (text pairs) only, since a
        decoder reads its score at the end of the response's turn, which a window does not have."""
        return self.encoder.kind == "pair"

    def window_policy(self, agg: str = WINDOW_AGG, size: int | None = None,
                      stride: int | None = None) -> WindowPolicy:
        """The window policy for this model: ``size`` defaults to :data:`WINDOW_SHARE` of the
        context (at most what fits beside one conversation token), ``stride`` to the size less
        :data:`WINDOW_OVERLAP` of it. Cross-encoders only (an :class:`InputError` otherwise)."""
        _check_policy("window", agg)
        most = self.encoder.max_window()
        for name, v in (("window_tokens", size), ("window_stride", stride)):
            if v is not None and (type(v) is not int or v < 1):
                raise InputError(f"{v!r}: expected a positive number of tokens", field=name)
        size = size or min(most, int(self.encoder.max_length * WINDOW_SHARE))
        if size > most:
            raise InputError(f"{size} tokens: a window holds at most {most} response tokens with this "
                             f"model ({self.encoder.max_length} tokens of context)", field="window_tokens")
        stride = stride or max(1, size - int(size * WINDOW_OVERLAP))
        if stride > size:
            raise InputError(f"{stride} tokens: more than the window ({size}), so tokens between "
                             "windows would never be read", field="window_stride")
        return WindowPolicy(agg, size, stride)

    def _windowed(self, items: Sequence[Item], ok: Sequence[int], policy: WindowPolicy,
                  bs: int, cancel: CancelToken | None) -> dict[int, Score]:
        """Scores of the too-long ``items[k]`` for k in ``ok``: their windows, scored together in
        one length-grouped pass (apart from the fitting rows, so theirs stay as without windows),
        combined by the policy, then length control once on the whole response."""
        parts = [self.encoder.encode_windows(items[k], policy.size, policy.stride) for k in ok]
        values = iter(self._score_encoded([e for p in parts for e in p], bs, cancel))
        agg = WINDOW_AGGS[policy.agg]
        out = {}
        for k, p in zip(ok, parts, strict=True):
            raw = agg([next(values) for _ in p])
            out[k] = Score(raw - self.length_term(items[k].response), sum(len(e.ids) for e in p),
                           p[0].cut_tokens, windows=len(p), policy=policy.name)
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
        window_agg: str = WINDOW_AGG,
        window_tokens: int | None = None,
        window_stride: int | None = None,
    ) -> Iterator[Score]:
        """Score items lazily, in input order. Memory is bounded by ``window`` items.

        ``total`` is only passed on to ``progress`` (for a bar over a stream).
        ``on_too_long``: ``"error"`` raises :class:`InputTooLongError` for a response that
        alone exceeds the context; ``"skip"`` yields a NaN score with ``skipped`` set;
        ``"window"`` scores it in windows (:meth:`window_policy`: ``window_tokens`` response
        tokens every ``window_stride``) combined by ``window_agg`` (:data:`WINDOW_AGGS`), and
        every score records the policy's name (a response that fits: one window, the same value
        as without windows). Windows are for cross-encoders; a decoder raises an InputError.
        """
        _check_policy(on_too_long, window_agg)
        policy = (self.window_policy(window_agg, window_tokens, window_stride)
                  if on_too_long == "window" else None)
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
                    if on_too_long == "error":
                        raise
                    encoded.append(e)
            ok = [e for e in encoded if isinstance(e, Encoded)]
            values = iter(self._score_encoded(ok, bs, cancel))
            windowed = {} if policy is None else self._windowed(
                chunk, [k for k, e in enumerate(encoded) if not isinstance(e, Encoded)], policy, bs, cancel)
            for k, (e, x) in enumerate(zip(encoded, chunk, strict=True)):
                if isinstance(e, Encoded):
                    s = Score(next(values) - self.length_term(x.response), len(e.ids), e.cut_tokens)
                    yield s if policy is None else dataclasses.replace(s, policy=policy.name)
                elif policy is not None:
                    yield windowed[k]
                else:
                    yield Score(math.nan, 0, 0, skipped=str(e))
            done += len(chunk)
            if progress:
                progress(done, total)

    def score(self, items: Iterable[Item | tuple], **kwargs) -> list[Score]:
        """Score every item; see :meth:`iter_scores` for the options."""
        return list(self.iter_scores(items, **kwargs))

    # ---- already-rendered text (OpenRLHF's remote RM) ----------------------------------
    def score_texts(self, texts: Sequence[str], prompts: Sequence[str | None] | None = None, *,
                    batch_size: int | None = None, cancel: CancelToken | None = None) -> list[Score]:
        """Score already-rendered text as given (OpenRLHF's ``query``: templated prompt + response).

        RLHF trainers send the exact text their policy produced; re-templating it would score a
        different string, so nothing is rendered here.

        * Decoders tokenize each text as it is, special-token text parsed as special tokens; the
          tokenizer adds its BOS, and a textual BOS at the start is not doubled (the rule
          :meth:`Encoder.render` follows). ``score_texts([render(item)])`` equals
          ``score([item])`` before length control.
        * Cross-encoders need ``prompts[i]``, and ``texts[i]`` must start with it: the pair is
          ``(prompt, text[len(prompt):])``, so the result equals scoring
          ``Item(prompt as one user turn, the rest)``. Otherwise an :class:`InputError` names the
          row and the field ``prompts``.
        * Nothing is cut: a text over the model's context raises :class:`InputTooLongError`
          with ``item_index`` set (a trainer must learn its rollouts are too long).
        * Length control needs the response's characters: they are the text after
          ``prompts[i]``, less the template's end-of-turn text (``<|im_end|>\\n``, or just its
          end-of-turn token, as generation stops on it). With no prompt, or one that does not
          prefix the text, a decoder's value is the raw output and ``Score.uncorrected`` is
          True (only when the model has a correction to skip).

        Scores go through :meth:`_score_encoded` like :meth:`score`, so they do not depend on
        the batch size or on which other texts are scored with them.
        """
        texts, prompts = _text_rows(texts, prompts)
        encoded: list[Encoded] = []
        responses: list[str | None] = []
        for i, (text, prompt) in enumerate(zip(texts, prompts, strict=True)):
            try:
                e, response = self._encode_text(text, prompt)
            except InputError as err:
                raise InputError(err.reason, field=err.field and f"{err.field}[{i}]") from None
            except InputTooLongError as err:
                err.item_index = i
                raise
            encoded.append(e)
            responses.append(response)
        values = self._score_encoded(encoded, batch_size or self.batch_size, cancel)
        beta = self.info.length_correction
        return [Score(v - self.length_term(r) if r is not None else v, len(e.ids), 0,
                      uncorrected=bool(beta) and r is None)
                for v, e, r in zip(values, encoded, responses, strict=True)]

    def _encode_text(self, text: str, prompt: str | None) -> tuple[Encoded, str | None]:
        """One row of :meth:`score_texts`: its encoding, and its response text when known."""
        enc = self.encoder
        if enc.kind == "pair":
            if prompt is None:
                raise InputError("a cross-encoder scores (prompt, response) pairs: give the prompt "
                                 "that this text starts with", field="prompts")
            if not text.startswith(prompt):
                raise InputError("the text does not start with this prompt, so the response cannot "
                                 "be split from it for a cross-encoder", field="prompts")
            item = Item(conversation(prompt), text[len(prompt):])
            e = enc.encode(item)
            if e.cut_tokens:
                raise InputTooLongError(
                    f"{len(e.ids) + e.cut_tokens} tokens; this model reads at most {enc.max_length}. "
                    "Rendered text is scored as given, never cut.")
            return e, item.response
        ids = enc.tokenizer.ids(enc._no_bos(text), add_special=True)
        if not ids:
            raise InputError("empty text: nothing to score", field="texts")
        if len(ids) > enc.max_length:
            raise InputTooLongError(f"{len(ids)} tokens; this model reads at most {enc.max_length}. "
                                    "Rendered text is scored as given, never cut.")
        response = None
        if prompt is not None and text.startswith(prompt):
            response = self._strip_turn_end(text[len(prompt):])
        return Encoded(tuple(ids), None, 0, 0), response

    def _strip_turn_end(self, tail: str) -> str:
        """The response inside a rendered tail: the template's end-of-turn text removed.

        What follows the response in a render is learnt once from a sentinel render; a tail
        ending in all of it, in it without trailing whitespace, or in the EOS token's text
        (generation stops on EOS) has that removed, so the length term counts the characters
        :meth:`score` would count.
        """
        ends = self._turn_ends
        if ends is None:
            sentinel = "\x1farbiter-response\x1f"
            rendered = self.encoder.render(Item(conversation("x"), sentinel))
            suffix = rendered[rendered.rfind(sentinel) + len(sentinel):] if sentinel in rendered else ""
            eos = self.encoder.files.special_tokens.get("eos_token") or ""
            ends = tuple(dict.fromkeys(e for e in (suffix, suffix.rstrip(), eos) if e))
            self._turn_ends = ends
        for end in ends:
            if tail.endswith(end):
                return tail[:-len(end)]
        return tail

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
                          shared: bool | None, **too_long: str) -> tuple[list[Score], bool]:
        """``shared``: None = the model's default, True = share where the tokens allow, False = never.
        ``too_long``: :meth:`iter_scores`'s ``on_too_long`` and ``window_agg``; windows are scored
        in full (windows are for cross-encoders, which never share)."""
        if too_long.get("on_too_long", "error") != "error":
            return self.score([Item(conv, r) for r in responses], **too_long), False
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
                shared_prompt: bool | None = None, **too_long: str) -> Comparison:
        """Score two responses to one conversation: margin and P(A better than B).
        ``too_long``: ``on_too_long`` and ``window_agg``, as for :meth:`iter_scores`."""
        conv = conversation(conv)
        (sa, sb), shared = self._score_candidates(conv, [a, b], shared_prompt, **too_long)
        return Comparison(sa, sb, prompt_shared=shared)

    def rank(self, conv: Conversation | Sequence | str, candidates: Sequence[str], *,
             shared_prompt: bool | None = None, **too_long: str) -> Ranking:
        """Best-of-N: candidates with their scores, best first (ties keep input order).
        ``too_long``: ``on_too_long`` and ``window_agg``, as for :meth:`iter_scores`."""
        if not candidates:
            raise InputError("rank needs at least one candidate", field="candidates")
        conv = conversation(conv)
        scores, shared = self._score_candidates(conv, list(candidates), shared_prompt, **too_long)
        return ranking_from_scores(list(candidates), scores, prompt_shared=shared)

