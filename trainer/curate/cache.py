"""Every judge call cached in SQLite, so a rerun asks nothing twice and a killed run resumes.

The key is (judge identity, sha256 of the canonical JSON of (messages, schema), the
sampling parameters, the sample index): the same question to the same model file or
endpoint+model under the same sampling is answered once. Each answer is committed in its
own transaction the moment it arrives (WAL journal, ``engine.store.connect``), so a
``kill -9`` loses at most the call in flight.

:class:`CachedJudge` also holds the answer rules: an answer must be a JSON object valid
under the schema. One that is not (a truncated answer at ``max_tokens``, a loose HTTP
server) is asked again with another seed (and, when the question was greedy, at
``RETRY_TEMPERATURE``: greedy decoding would repeat the same answer), at most ``attempts``
times, then the question is abstained (None). Abstentions are cached too, so a rerun is deterministic and free.
Errors that say nothing about the question (endpoint down, key refused) are raised and
not cached: the run stops and resumes later.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.errors import InputError
from trainer.curate.judges import Judge, PromptTooLong, Sampling, parse_answer

#: how many answers one question may get before it is abstained (each with another seed)
DEFAULT_ATTEMPTS = 3
#: a greedy question asked again would get the same bad answer: retries sample at this temperature
RETRY_TEMPERATURE = 0.7


def canonical_json(value: Any) -> str:
    """Key order and spacing fixed, so equal values hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prompt_hash(messages: list[dict[str, str]], schema: dict) -> str:
    return hashlib.sha256(canonical_json([messages, schema]).encode()).hexdigest()


def attempt_seed(seed: int, sample: int, attempt: int) -> int:
    """The seed of one try: differs per sample (self-consistency) and per retry, deterministic."""
    return (seed * 1_000_003 + sample * 7_919 + attempt * 104_729) % (2 ** 31)


class CallCache:
    """SQLite file of judge answers (``calls`` table); safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        from engine.store import connect, write_transaction

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect(self.path, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, write_transaction(self._conn):
            self._conn.execute(
                "create table if not exists calls (identity text not null, prompt text not null, "
                "params text not null, sample integer not null, status text not null, "
                "answer text, raw text, attempts integer not null, created real not null, "
                "primary key (identity, prompt, params, sample))")

    def get(self, identity: str, prompt: str, params: str, sample: int) -> tuple[str, dict | None] | None:
        """(status, answer) of a cached call, or None when it was never answered."""
        with self._lock:
            row = self._conn.execute(
                "select status, answer from calls where identity=? and prompt=? and params=? and sample=?",
                [identity, prompt, params, sample]).fetchone()
        if row is None:
            return None
        return row[0], (json.loads(row[1]) if row[1] is not None else None)

    def put(self, identity: str, prompt: str, params: str, sample: int, status: str,
            answer: dict | None, raw: str | None, attempts: int) -> None:
        """Store one answer, committed before this returns (its own transaction)."""
        from engine.store import write_transaction

        with self._lock, write_transaction(self._conn):
            self._conn.execute(
                "insert or replace into calls values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [identity, prompt, params, sample, status,
                 canonical_json(answer) if answer is not None else None, raw, attempts, time.time()])

    def count(self, identity: str | None = None) -> int:
        with self._lock:
            if identity is None:
                return self._conn.execute("select count(*) from calls").fetchone()[0]
            return self._conn.execute("select count(*) from calls where identity=?", [identity]).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class CachedJudge:
    """A judge behind the call cache and the answer rules (see the module doc).

    Counters (this object's life): ``calls_made`` (requests sent to the judge, retries
    included), ``cache_hits``, ``schema_failures`` (answers that failed the schema),
    ``abstained`` (questions given up, counted once, cached or not).
    """

    def __init__(self, judge: Judge, cache: CallCache, *, attempts: int = DEFAULT_ATTEMPTS) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.judge, self.cache, self.attempts = judge, cache, attempts
        self.calls_made = self.cache_hits = self.schema_failures = self.abstained = 0
        self._count = threading.Lock()

    @property
    def name(self) -> str:
        return self.judge.name

    @property
    def identity(self) -> str:
        return self.judge.identity

    def _bump(self, **n: int) -> None:
        with self._count:
            for k, v in n.items():
                setattr(self, k, getattr(self, k) + v)

    def ask(self, messages: list[dict[str, str]], schema: dict, params: Sampling, sample: int) -> dict | None:
        """The schema-valid answer to sample ``sample`` of this question, or None (abstain)."""
        key = (self.judge.identity, prompt_hash(messages, schema), canonical_json(params.to_dict()), sample)
        hit = self.cache.get(*key)
        if hit is not None:
            self._bump(cache_hits=1, abstained=int(hit[0] != "ok"))
            return hit[1] if hit[0] == "ok" else None
        raw: str | None = None
        for attempt in range(self.attempts):
            try_params = replace(params, seed=attempt_seed(params.seed, sample, attempt))
            if attempt and params.temperature == 0.0:
                try_params = replace(try_params, temperature=RETRY_TEMPERATURE)
            try:
                raw = self.judge.complete(messages, schema, try_params)
            except PromptTooLong:
                self._bump(calls_made=1, abstained=1)
                self.cache.put(*key, "too_long", None, None, attempt + 1)
                return None
            self._bump(calls_made=1)
            answer = parse_answer(raw, schema)
            if answer is not None:
                self.cache.put(*key, "ok", answer, raw, attempt + 1)
                return answer
            self._bump(schema_failures=1)
        self._bump(abstained=1)
        self.cache.put(*key, "abstain", None, raw, self.attempts)
        return None

    def counters(self) -> dict[str, int]:
        return {"calls_made": self.calls_made, "cache_hits": self.cache_hits,
                "schema_failures": self.schema_failures, "abstained": self.abstained}


def cached_judges(judges: Sequence[Any], out: Path) -> list[CachedJudge]:
    """Every judge behind the run's call cache ``OUT/calls.db`` (a ready :class:`CachedJudge`
    keeps its own); names must differ, since votes are stored by judge name."""
    cache: CallCache | None = None
    wrapped = []
    for j in judges:
        if isinstance(j, CachedJudge):
            wrapped.append(j)
            continue
        cache = cache or CallCache(out / "calls.db")
        wrapped.append(CachedJudge(j, cache))
    names = [j.name for j in wrapped]
    if len(set(names)) != len(names):
        raise InputError(f"judge names must differ (votes are stored by name): {', '.join(names)}", field="judge")
    return wrapped
