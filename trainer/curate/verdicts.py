"""From judge answers to a label: both orders, self-consistency, majority across judges.

Position bias is real (Gemma 3 270M answers "1" whatever it is shown), so every sample
asks each judge twice, once in each order, and counts only when both orders name the same
stored response (or both say tie). Which order is asked first is drawn per (pair, sample)
from ``seed``: deterministic, so a rerun asks the same questions and hits the cache.

Majorities are strict and conservative, because the paper discards undecidable pairs
rather than guess:

* a judge's label is the one that more than half of its ``samples`` agree on (an
  inconsistent or abstained sample counts against every label);
* the pair's label is the one that more than half of the judges give (a judge without a
  label counts against every label). Otherwise the verdict abstains (``label=None``).

Labels are in stored order: "1" means the pair's first response (``chosen``) is better.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from engine.errors import InputError
from trainer.curate.judges import Sampling
from trainer.curate.prompts import VERDICT_SCHEMA, Example, pair_prompt

if TYPE_CHECKING:
    from trainer.curate.attributes import Attributes
    from trainer.curate.cache import CachedJudge
    from trainer.data.record import PreferencePair

#: tokens: room for the longest answer the schema allows (a 100-character reason, one token a
#: character at worst, plus the JSON around it), so a grammar-constrained answer is never cut
VERDICT_MAX_TOKENS = 128
#: temperature of self-consistency samples (with one sample, greedy)
SAMPLE_TEMPERATURE = 0.7
_UNSWAP = {"1": "2", "2": "1", "tie": "tie"}


@dataclass(frozen=True)
class Vote:
    judge: str
    sample: int
    order: Literal["ab", "ba"]  # "ab": chosen shown as Candidate 1
    better: str | None  # in stored order; None: the judge abstained on this question


@dataclass
class Verdict:
    label: str | None
    votes: list[Vote] = field(default_factory=list)
    per_judge: dict[str, str | None] = field(default_factory=dict)


def default_sampling(samples: int) -> Sampling:
    return Sampling(temperature=0.0 if samples == 1 else SAMPLE_TEMPERATURE, max_tokens=VERDICT_MAX_TOKENS)


def first_order(pair_id: str, sample: int, seed: int) -> Literal["ab", "ba"]:
    """The order asked first for (pair, sample): a fair coin seeded by (seed, pair id, sample)."""
    return "ab" if random.Random(f"{seed}|{pair_id}|{sample}").random() < 0.5 else "ba"


def strict_majority(labels: Sequence[str | None], total: int) -> str | None:
    """The label more than half of ``total`` voters gave, else None (None votes never win)."""
    counts = Counter(x for x in labels if x is not None)
    if not counts:
        return None
    label, n = counts.most_common(1)[0]
    return label if 2 * n > total else None


def _ask(judge: CachedJudge, pair: PreferencePair, attributes: Attributes | None,
         examples: Sequence[Example], sample: int, order: str, params: Sampling) -> Vote:
    swap = order == "ba"
    answer = judge.ask(pair_prompt(pair, attributes, examples, swap), VERDICT_SCHEMA, params, sample)
    better = None if answer is None else answer["better"]
    if better is not None and swap:
        better = _UNSWAP[better]
    return Vote(judge.name, sample, order, better)  # type: ignore[arg-type]


def judge_pair(judges: Sequence[CachedJudge], pair: PreferencePair, attributes: Attributes | None,
               examples: Sequence[Example], *, samples: int = 1, seed: int = 0,
               params: Sampling | None = None) -> Verdict:
    """Ask every judge, ``samples`` times in both orders, and aggregate (see the module doc)."""
    if samples < 1:
        raise ValueError("samples must be at least 1")
    if not judges:
        raise ValueError("judge_pair needs at least one judge")
    names = [j.name for j in judges]
    if len(set(names)) != len(names):
        raise InputError(f"judges need distinct names (votes are kept per name), got {names}")
    params = params or default_sampling(samples)
    votes: list[Vote] = []
    per_judge: dict[str, str | None] = {}
    for judge in judges:
        consistent: list[str | None] = []
        for s in range(samples):
            first = first_order(pair.id, s, seed)
            orders = (first, "ba" if first == "ab" else "ab")
            a, b = (_ask(judge, pair, attributes, examples, s, o, params) for o in orders)
            votes += [a, b]
            consistent.append(a.better if a.better is not None and a.better == b.better else None)
        per_judge[judge.name] = strict_majority(consistent, samples)
    label = strict_majority(list(per_judge.values()), len(judges))
    return Verdict(label, votes, per_judge)


Item = tuple["PreferencePair", "Attributes | None", Sequence[Example]]


def judge_pairs(judges: Sequence[CachedJudge], items: Sequence[Item], *, samples: int = 1,
                seed: int = 0, params: Sampling | None = None, concurrency: int = 4,
                on_verdict: Callable[[int, Verdict], None] | None = None) -> list[Verdict]:
    """``judge_pair`` for many (pair, attributes, examples) items, ``concurrency`` at a time.

    Threads, because the work is waiting: HTTP judges overlap their requests (each judge
    bounds its own connections), a local judge serialises on its lock. ``on_verdict(i, v)``
    is called as each finishes (from worker threads, one at a time), so a caller can store
    each verdict at once. The first error (e.g. JudgeUnavailable) cancels what has not
    started and is raised; finished verdicts were already delivered.
    """
    results: list[Verdict | None] = [None] * len(items)
    deliver = threading.Lock()

    def one(i: int) -> None:
        pair, attrs, examples = items[i]
        v = judge_pair(judges, pair, attrs, examples, samples=samples, seed=seed, params=params)
        results[i] = v
        if on_verdict is not None:
            with deliver:
                on_verdict(i, v)

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="judge") as pool:
        futures = [pool.submit(one, i) for i in range(len(items))]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f.done() and f.exception() is not None), None)
        if failed is not None:
            for f in futures:
                f.cancel()
            raise failed.exception()  # type: ignore[misc]  # leaving `with` waits for running ones
    return results  # type: ignore[return-value]  # every item finished without an error
