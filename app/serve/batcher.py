"""Dynamic micro-batching: many requests, one scorer call, one thread per model.

Requests arrive on the event loop; each becomes a :class:`Work` (its items, and a future).
One worker thread per model takes work from a bounded FIFO queue: it waits at most
``max_wait_s`` after the oldest waiting work arrived for up to ``max_batch_items`` items to
gather, then scores what it took in one engine call (``Scorer.score`` or
``Scorer.score_texts``, which group by length), splits the scores back and resolves each
request's future on the loop. A scorer is only ever used from its own worker thread.

Why scores do not depend on the company a row keeps: the engine computes every row alone
(per-row padding masks, static int8 scales, one decode per sequence in llama.cpp), so
batching changes speed, not values; ``tests/test_serve.py`` checks it through the server.
Why one bad request cannot fail its neighbours: when a merged call raises, each work in it
is run again alone, so the error reaches only the request that caused it.

Backpressure: the queue holds at most ``max_queue`` items; work that does not fit is refused
at once with :class:`Overloaded` (429 and Retry-After), never dropped and never left waiting
without bound. An empty queue always accepts one work, however large, so a request within
the per-request item limit is never refused forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from app.serve.metrics import Metrics
from engine.errors import InputTooLongError, ModelError
from engine.scorer import WINDOW_AGG, Scorer
from engine.types import Conversation, Item, Score

log = logging.getLogger(__name__)

Kind = Literal["items", "texts", "candidates", "call"]


class Overloaded(Exception):
    """The model's queue is full; ``retry_after`` is a whole number of seconds to wait."""

    def __init__(self, model: str, queued: int, retry_after: int) -> None:
        self.model, self.queued, self.retry_after = model, queued, retry_after
        super().__init__(f"model {model!r} is busy: {queued} items are waiting to be scored; "
                         f"retry in {retry_after} s")


@dataclass(eq=False, slots=True)
class Work:
    """One request's share of the model's time. Build it with the ``of_*`` constructors."""

    kind: Kind
    size: int  # items it adds to the queue
    items: Sequence[Item] = ()
    texts: Sequence[str] = ()
    prompts: Sequence[str | None] = ()
    conversation: Conversation = ()
    responses: Sequence[str] = ()
    shared_prompt: bool | None = None
    call: Callable[[Scorer], Any] | None = field(default=None, repr=False)
    enqueued: float = 0.0  # time.monotonic() when queued, seconds
    future: asyncio.Future | None = field(default=None, repr=False)
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    @staticmethod
    def of_items(items: Sequence[Item]) -> Work:
        """Items scored with ``Scorer.score``; merged with other requests' items."""
        return Work("items", len(items), items=list(items))

    @staticmethod
    def of_texts(texts: Sequence[str], prompts: Sequence[str | None] | None) -> Work:
        """Rendered texts scored with ``Scorer.score_texts``; merged with other requests' texts."""
        return Work("texts", len(texts), texts=list(texts),
                    prompts=list(prompts) if prompts is not None else [None] * len(texts))

    @staticmethod
    def of_call(fn: Callable[[Scorer], Any], size: int) -> Work:
        """``fn(scorer)`` run on the model's thread, alone (its result is the work's answer): for
        callers that drive the scorer themselves, as moderation does (windows, a reference
        refusal); ``size`` is the items it scores, for the queue's bound."""
        return Work("call", max(1, size), call=fn)

    @staticmethod
    def of_candidates(conv: Conversation, responses: Sequence[str], shared_prompt: bool | None) -> Work:
        """Responses to one conversation, scored with ``Scorer.rank`` so the prompt is computed once."""
        return Work("candidates", len(responses), conversation=conv, responses=list(responses),
                    shared_prompt=shared_prompt)


@dataclass(frozen=True, slots=True)
class Scored:
    """What a work gets back: scores in its own input order."""

    scores: list[Score]
    prompt_shared: bool = False


class Batcher:
    """A bounded queue and the one thread that runs a model's scorer."""

    def __init__(self, scorer: Scorer, name: str, metrics: Metrics, *, max_batch_items: int,
                 max_wait_s: float, max_queue: int, batch_size: int | None = None,
                 windows: bool = False, window_agg: str = WINDOW_AGG) -> None:
        self.scorer, self.name, self.metrics = scorer, name, metrics
        self.max_batch_items, self.max_wait_s, self.max_queue = max_batch_items, max_wait_s, max_queue
        self.batch_size = batch_size
        #: a response over the context: windows (``--on-too-long window``), else a skipped row
        #: that :func:`_checked` turns into the request's 422
        self.too_long = {"on_too_long": "window" if windows else "skip", "window_agg": window_agg}
        self._queue: deque[Work] = deque()
        self._queued = 0  # items in _queue
        self._cond = threading.Condition()
        self._stopping = False
        self._rate = 0.0  # items per second, a moving average over recent scorer calls
        self._thread = threading.Thread(target=self._run, name=f"arbiter-serve:{name}", daemon=True)

    # ---- the event loop's side ---------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queued

    async def submit(self, work: Work) -> Scored:
        """Queue ``work`` and wait for its scores; :class:`Overloaded` at once when it cannot fit."""
        work.loop = asyncio.get_running_loop()
        work.future = work.loop.create_future()
        with self._cond:
            if self._stopping:
                raise Overloaded(self.name, self._queued, 1)
            if self._queue and self._queued + work.size > self.max_queue:
                self.metrics.rejected.labels(self.name).inc()
                raise Overloaded(self.name, self._queued, self._retry_after(work.size))
            work.enqueued = time.monotonic()
            self._queue.append(work)
            self._queued += work.size
            self.metrics.queue_depth.labels(self.name).set(self._queued)
            self._cond.notify()
        # shield: a client that goes away must not cancel the future the worker will resolve
        return await asyncio.shield(work.future)

    def _retry_after(self, extra: int) -> int:
        """Seconds until the queue has likely drained enough, from the recent scoring rate."""
        rate = self._rate or 1.0
        return max(1, min(60, math.ceil((self._queued + extra) / rate)))

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued work, then end the thread (graceful shutdown)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the worker thread ---------------------------------------------------------------
    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._execute(batch)
            except BaseException as e:  # never die silently with requests waiting on us
                log.exception("scoring failed for model %s", self.name)
                for w in batch:
                    _settle(w, None, e if isinstance(e, Exception) else RuntimeError(str(e)))

    def _take(self) -> list[Work] | None:
        """The next micro-batch: what is waiting once the oldest work has waited long enough or
        ``max_batch_items`` are there; None when stopping with nothing left."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].enqueued + self.max_wait_s
            while self._queued < self.max_batch_items and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[Work] = []
            n = 0
            while self._queue and (not batch or n + self._queue[0].size <= self.max_batch_items):
                w = self._queue.popleft()
                batch.append(w)
                n += w.size
            self._queued -= n
            self.metrics.queue_depth.labels(self.name).set(self._queued)
            return batch

    def _execute(self, batch: list[Work]) -> None:
        t0 = time.monotonic()
        for kind in ("items", "texts", "candidates"):
            group = [w for w in batch if w.kind == kind]
            if group:
                self._run_group(group)
        for w in batch:
            if w.kind == "call":
                try:
                    _settle(w, w.call(self.scorer), None)
                except Exception as e:  # the error is this request's alone
                    _settle(w, None, e)
        n = sum(w.size for w in batch)
        dt = max(time.monotonic() - t0, 1e-6)
        self._rate = n / dt if not self._rate else 0.8 * self._rate + 0.2 * n / dt
        self.metrics.batch_items.labels(self.name).observe(n)
        self.metrics.batch_latency.labels(self.name).observe(dt)
        self.metrics.items.labels(self.name).inc(n)

    def _run_group(self, group: list[Work]) -> None:
        """Score works of one kind together; when that raises, each alone (errors stay with their work)."""
        try:
            results = self._score(group)
        except Exception as e:
            if len(group) == 1:
                _settle(group[0], None, e)
                return
            log.debug("a merged call failed (%s); scoring its %d requests one by one", e, len(group))
            for w in group:
                self._run_group([w])
            return
        for w, r in zip(group, results, strict=True):
            if isinstance(r, Exception):
                _settle(w, None, r)
            else:
                _settle(w, r, None)

    def _shares(self, w: Work) -> bool:
        """Whether ranking ``w`` alone could compute its conversation once (else it is merged)."""
        rm = self.scorer
        return (w.shared_prompt is not False and rm.prompt_sharing and rm.encoder.kind == "chat"
                and (w.shared_prompt or rm.share_prompt_by_default))

    def _score(self, group: list[Work]) -> list[Scored | Exception]:
        kind = group[0].kind
        if kind == "candidates":
            # a model that cannot share the prompt (a cross-encoder, dynamic int8) gains nothing
            # from ranking alone: its candidates are merged with the other requests' as items
            merged = [w for w in group if not self._shares(w)]
            flat = self.scorer.score([Item(w.conversation, r) for w in merged for r in w.responses],
                                     batch_size=self.batch_size, **self.too_long) if merged else []
            out: list[Scored | Exception] = []
            start = 0
            for w in group:
                if self._shares(w):
                    out.append(self._rank(w))
                else:
                    out.append(_checked(flat[start:start + w.size]))
                    start += w.size
            return out
        if kind == "items":
            flat = self.scorer.score([it for w in group for it in w.items], batch_size=self.batch_size,
                                     **self.too_long)
        else:
            flat = self.scorer.score_texts([t for w in group for t in w.texts],
                                           [p for w in group for p in w.prompts], batch_size=self.batch_size)
        out: list[Scored | Exception] = []
        start = 0
        for w in group:
            out.append(_checked(flat[start:start + w.size]))
            start += w.size
        return out

    def _rank(self, w: Work) -> Scored | Exception:
        try:
            r = self.scorer.rank(w.conversation, w.responses, shared_prompt=w.shared_prompt)
        except Exception as e:
            return e
        scores: list[Any] = [None] * len(w.responses)
        for c in r.candidates:
            scores[c.index] = c.score
        checked = _checked(scores)
        return Scored(checked.scores, r.prompt_shared) if isinstance(checked, Scored) else checked


def _checked(scores: list[Score]) -> Scored | Exception:
    """Scores a client can use: a row the model could not fit, or a NaN, is an error for its request."""
    for i, s in enumerate(scores):
        if s.skipped:
            e = InputTooLongError(s.skipped)
            e.item_index = i
            return e
        if not math.isfinite(s.value):
            return ModelError(f"the model gave a non-finite score ({s.value}) for item {i}; the model "
                              "file may be damaged: check it with `arbiter verify`")
    return Scored(list(scores))


def _settle(w: Work, result: Any, error: Exception | None) -> None:
    """Resolve a work's future from the worker thread (on its loop, where futures live)."""
    def settle() -> None:
        if w.future is not None and not w.future.done():
            if error is not None:
                w.future.set_exception(error)
            else:
                w.future.set_result(result)

    if w.loop is None:
        return
    with contextlib.suppress(RuntimeError):  # the loop is gone (the process is ending): nobody waits
        w.loop.call_soon_threadsafe(settle)
