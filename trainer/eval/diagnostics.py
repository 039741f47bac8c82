"""Bias diagnostics: length bias, style bias, and score distributions.

Length bias is measured on every (good, bad) response pair inside a record, so it works
the same for pairs, best-of-N and RM-Bench's 3x3 comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from trainer.eval.items import Scored
from trainer.eval.metrics import pct


def _comparisons(scored: Sequence[Scored]) -> list[tuple[int, bool]]:
    """(sign of len(good) - len(bad), good scored strictly higher) for every good x bad pair."""
    out = []
    for s in scored:
        if s.record.tie:
            continue
        for g in s.record.chosen:
            for b in s.record.rejected:
                dl = len(s.record.responses[g]) - len(s.record.responses[b])
                out.append((int(np.sign(dl)), s.scores[g] > s.scores[b]))
    return out


def length_bias(scored: Sequence[Scored]) -> dict[str, Any]:
    """Accuracy over comparisons where the good response is longer, shorter, or equally long.

    A model that tracks quality scores about the same in both; a large
    ``longer - shorter`` gap means length, not content, is driving the score.
    """
    comps = _comparisons(scored)
    out: dict[str, Any] = {}
    for name, sign in (("chosen_longer", 1), ("chosen_shorter", -1), ("same_length", 0)):
        hits = [ok for sg, ok in comps if sg == sign]
        out[name] = {"accuracy": pct(sum(hits), len(hits)), "n": len(hits)}
    a, b = out["chosen_longer"]["accuracy"], out["chosen_shorter"]["accuracy"]
    out["gap"] = a - b if not (math.isnan(a) or math.isnan(b)) else math.nan
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's rho."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN where it is undefined (fewer than 2 points, or no spread)."""
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def score_length_correlation(scored: Sequence[Scored]) -> dict[str, float]:
    """Pearson and Spearman correlation between a response's score and its length (chars)."""
    scores = np.array([v for s in scored for v in s.scores], dtype=float)
    lengths = np.array([len(t) for s in scored for t in s.record.responses], dtype=float)
    return {"pearson": pearson(scores, lengths), "spearman": pearson(_ranks(scores), _ranks(lengths)),
            "n": len(scores)}


def style_gap(rm_bench_metrics: dict[str, Any]) -> dict[str, float]:
    """RM-Bench style bias: hard - normal accuracy, overall and per domain. Negative means
    the model is pulled by style (it prefers a fancier wrong answer over a plainer right one)."""
    out = {"overall": rm_bench_metrics["hard"] - rm_bench_metrics["normal"]}
    for d, v in rm_bench_metrics.get("by_category", {}).items():
        out[d] = v["hard"] - v["normal"]
    return out


def distributions(scored: Sequence[Scored], bins: int = 30) -> dict[str, Any]:
    """Score distributions of good (chosen) vs bad (rejected) responses: summary statistics
    and histogram counts on shared bin edges (ties excluded)."""
    good = np.array([s.scores[i] for s in scored if not s.record.tie for i in s.record.chosen], dtype=float)
    bad = np.array([s.scores[i] for s in scored if not s.record.tie for i in s.record.rejected], dtype=float)
    both = np.concatenate([good, bad])
    if both.size == 0:
        return {}
    lo, hi = float(both.min()), float(both.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)

    def summary(x: np.ndarray) -> dict[str, float]:
        if x.size == 0:
            return {"n": 0}
        q = np.percentile(x, [5, 25, 50, 75, 95])
        return {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std()),
                **{f"p{p}": float(v) for p, v in zip((5, 25, 50, 75, 95), q, strict=True)}}

    return {"chosen": summary(good), "rejected": summary(bad), "edges": edges.tolist(),
            "chosen_hist": np.histogram(good, edges)[0].tolist(),
            "rejected_hist": np.histogram(bad, edges)[0].tolist()}
