"""How far annotators (people, judges, the reward model) agree on preference labels.

Curation trusts human gold only as far as the humans agree with each other, so stage 1
reports Krippendorff's alpha over every annotator (nominal, missing data allowed: each
annotator labels only some pairs), Cohen's kappa for each pair of annotators on the pairs
both labelled, and the plain share of pairs on which a judge or the reward model gives the
human majority's label.

A *unit* is one pair; its *values* are the labels it got, in the stored order's vocabulary
(:data:`LABELS`: ``"1"`` = the pair's first response is better, ``"2"``, ``"tie"``,
``"both_bad"``). Alpha follows Krippendorff (2011, "Computing Krippendorff's
Alpha-Reliability"): build the coincidence matrix from the units with at least two values
(a unit with one value has nobody to agree with and contributes nothing), then
alpha = 1 - D_o / D_e. When every pairable value is the same category D_e is 0 and alpha is
undefined: :func:`krippendorff_alpha` returns NaN and :func:`alpha_undefined_reason` says why
(the CLI prints ``null`` with that reason; it never invents a 1 or a 0).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError
from trainer.curate.annotations import LABELS, LabelRow  # one row type for the store and for files

__all__ = ["LABELS", "LabelRow", "agreement_report", "alpha_interval", "cohen_kappa",
           "krippendorff_alpha", "label_agreement", "read_labels"]

#: bootstrap defaults: resamples over units, and the two-sided coverage of the interval
N_BOOT = 1000
LEVEL = 0.95


# ---- Krippendorff's alpha -------------------------------------------------------------------

def _count_matrix(units: Mapping[str, Sequence[str]]) -> tuple[np.ndarray, list[str]]:
    """(units x categories) counts of each value, for the units with >= 2 values, and the categories."""
    pairable = [list(v) for v in units.values() if len(v) >= 2]
    categories = sorted({x for v in pairable for x in v})
    index = {c: i for i, c in enumerate(categories)}
    counts = np.zeros((len(pairable), len(categories)), dtype=np.float64)
    for u, values in enumerate(pairable):
        for x in values:
            counts[u, index[x]] += 1
    return counts, categories


def _alpha_parts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: its values' counts n_uc, and its agreeing coincidences sum_c n_uc (n_uc - 1) / (m_u - 1).

    Summed over (a resample of) units, these give everything nominal alpha needs: n_c is
    the column sum of n_uc, and the diagonal of the coincidence matrix sums to the second.
    """
    m = counts.sum(axis=1)
    agree = (counts * (counts - 1)).sum(axis=1) / (m - 1)
    return counts, agree


def _alpha_from_sums(n_c: np.ndarray, agree: np.ndarray) -> np.ndarray:
    """Nominal alpha = 1 - (n - 1) (n - sum_c o_cc) / (n^2 - sum_c n_c^2), NaN where undefined.

    ``n_c``: (..., categories) value totals; ``agree``: (...) the coincidence matrix's trace.
    """
    n = n_c.sum(axis=-1)
    expected = n * n - (n_c * n_c).sum(axis=-1)  # sum over c != k of n_c n_k
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = 1.0 - (n - 1.0) * (n - agree) / expected
    return np.where(expected > 0, alpha, np.nan)


def krippendorff_alpha(units: Mapping[str, Sequence[str]]) -> float:
    """Krippendorff's alpha for nominal labels; ``units`` maps a pair id to the labels it got.

    Missing data is simply a shorter sequence. NaN when undefined (fewer than two values
    in pairable units, or one category only): see :func:`alpha_undefined_reason`.
    """
    counts, _ = _count_matrix(units)
    if counts.shape[0] == 0:
        return math.nan
    c, agree = _alpha_parts(counts)
    return float(_alpha_from_sums(c.sum(axis=0), np.asarray(agree.sum())))


def alpha_undefined_reason(units: Mapping[str, Sequence[str]]) -> str | None:
    """Why alpha is NaN for these units, or None when it is defined."""
    counts, categories = _count_matrix(units)
    if counts.shape[0] == 0:
        return "no pair has labels from two or more annotators, so there is no agreement to measure"
    if len(categories) == 1:
        return (f"every label on the pairs labelled twice or more is {categories[0]!r}: with one category "
                "the expected disagreement is 0 and alpha is 0/0 (Krippendorff: undefined)")
    return None


def alpha_interval(units: Mapping[str, Sequence[str]], n_boot: int = N_BOOT, seed: int = 0,
                   level: float = LEVEL) -> tuple[float, float]:
    """A bootstrap percentile interval (95% by default) for alpha, resampling units with replacement.

    Resamples where alpha is undefined (all one category) are left out; (NaN, NaN) when
    none is defined. Seeded, so the same labels give the same interval.
    """
    counts, _ = _count_matrix(units)
    n_units = counts.shape[0]
    if n_units == 0 or n_boot < 1:
        return math.nan, math.nan
    c, agree = _alpha_parts(counts)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 2_000_000 // n_units))  # resamples per step: 2M draws, ~50 MB of arrays
    alphas = []
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        # each row: how often each unit was drawn in one resample of n_units draws
        draws = rng.integers(0, n_units, size=(size, n_units)) + np.arange(size)[:, None] * n_units
        weights = np.bincount(draws.ravel(), minlength=size * n_units).reshape(size, n_units).astype(np.float64)
        alphas.append(_alpha_from_sums(weights @ c, weights @ agree))
    values = np.concatenate(alphas)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2 * 100  # percent
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


# ---- Cohen's kappa and plain agreement -------------------------------------------------------

def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two annotators over the same units, position by position.

    (p_o - p_e) / (1 - p_e) with p_e from each annotator's own label shares. NaN when
    there are no units or chance agreement is certain (both used one and the same label).
    """
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs labels for the same units: {len(a)} and {len(b)} given")
    n = len(a)
    if n == 0:
        return math.nan
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[c] * cb[c] for c in ca) / (n * n)
    if expected >= 1.0:
        return math.nan
    return (observed - expected) / (1.0 - expected)


def label_agreement(a: Mapping[str, str], b: Mapping[str, str]) -> tuple[float, int]:
    """(share of the common keys where ``a`` and ``b`` give the same label, how many are common).

    The share is NaN when no key is common. Stage 1 uses it for judge-vs-human agreement.
    """
    common = a.keys() & b.keys()
    if not common:
        return math.nan, 0
    return sum(a[k] == b[k] for k in common) / len(common), len(common)


def units_of(rows: Sequence[LabelRow]) -> dict[str, list[str]]:
    """pair id -> its labels, in row order."""
    units: dict[str, list[str]] = {}
    for r in rows:
        units.setdefault(r.pair_id, []).append(r.label)
    return units


def majority(rows: Sequence[LabelRow]) -> dict[str, str]:
    """pair id -> the label most of its annotators gave; a pair whose top count is shared has none."""
    out = {}
    for pair_id, labels in units_of(rows).items():
        top = Counter(labels).most_common(2)
        if len(top) == 1 or top[0][1] > top[1][1]:
            out[pair_id] = top[0][0]
    return out


def kappa_pairs(rows: Sequence[LabelRow]) -> list[dict[str, Any]]:
    """Cohen's kappa for every pair of annotators, on the pairs both labelled (sorted by name)."""
    by_annotator: dict[str, dict[str, str]] = {}
    for r in rows:
        by_annotator.setdefault(r.annotator, {})[r.pair_id] = r.label
    out = []
    for x, y in itertools.combinations(sorted(by_annotator), 2):
        common = sorted(by_annotator[x].keys() & by_annotator[y].keys())
        a = [by_annotator[x][k] for k in common]
        b = [by_annotator[y][k] for k in common]
        out.append({"annotators": [x, y], "kappa": cohen_kappa(a, b), "units": len(common),
                    "agreement": label_agreement(by_annotator[x], by_annotator[y])[0]})
    return out


# ---- reading label files ---------------------------------------------------------------------

def _text_field(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError("missing; every row needs it (a string)" if value is None
                         else f"must be a string; got {type(value).__name__}", field=name)
    text = str(value)
    if not text.strip():
        raise InputError("is empty", field=name)
    return text


def _label(value: Any, allowed: Sequence[str], name: str = "label") -> str:
    if isinstance(value, str) and value in allowed:
        return value
    if value is None:
        raise InputError(f"missing; one of {', '.join(map(repr, allowed))}", field=name)
    hint = f' (a number; write it as a string: "{value}")' if isinstance(value, int) \
        and str(value) in allowed else ""
    raise InputError(f"unknown label {value!r}{hint}; one of {', '.join(map(repr, allowed))}", field=name)


def read_labels(path: str | Path) -> list[LabelRow]:
    """Rows ``{"pair_id", "annotator", "label"}`` from JSONL (``.gz`` too) or a JSON array.

    Other fields (a note, seconds) are ignored. An unknown label, a missing field or a
    second label from one annotator for one pair is an InputError naming file, line and field.
    """
    from engine.jsonl import read_json_or_jsonl

    source = str(path)
    rows: list[LabelRow] = []
    first: dict[tuple[str, str], int] = {}  # (pair, annotator) -> the line of its label
    for line, row in read_json_or_jsonl(path):
        try:
            if not isinstance(row, dict):
                raise InputError(f"expected a JSON object, got {type(row).__name__}")
            pair_id, annotator = _text_field(row, "pair_id"), _text_field(row, "annotator")
            label = _label(row.get("label"), LABELS)
            if (pair_id, annotator) in first:
                raise InputError(f"a second label for pair {pair_id!r} from annotator {annotator!r} "
                                 f"(the first is on line {first[pair_id, annotator]}); keep one per "
                                 "pair and annotator", field="label")
        except InputError as e:
            raise e.located(source, line) from None
        first[pair_id, annotator] = line
        rows.append(LabelRow(pair_id, annotator, label))
    if not rows:
        raise InputError("no labels: expected rows {\"pair_id\", \"annotator\", \"label\"}", source=source)
    return rows


def read_judge_votes(path: str | Path) -> dict[str, dict[str, str | None]]:
    """judge -> {pair id -> label or None (abstained)} from rows ``{"pair_id", "judge", "label"}``."""
    from engine.jsonl import read_json_or_jsonl

    source = str(path)
    out: dict[str, dict[str, str | None]] = {}
    first: dict[tuple[str, str], int] = {}
    for line, row in read_json_or_jsonl(path):
        try:
            if not isinstance(row, dict):
                raise InputError(f"expected a JSON object, got {type(row).__name__}")
            pair_id, judge = _text_field(row, "pair_id"), _text_field(row, "judge")
            label = None if row.get("label") is None else _label(row["label"], LABELS)
            if (pair_id, judge) in first:
                raise InputError(f"a second label for pair {pair_id!r} from judge {judge!r} (the first "
                                 f"is on line {first[pair_id, judge]})", field="label")
        except InputError as e:
            raise e.located(source, line) from None
        first[pair_id, judge] = line
        out.setdefault(judge, {})[pair_id] = label
    if not out:
        raise InputError("no judge labels: expected rows {\"pair_id\", \"judge\", \"label\"}", source=source)
    return out


# ---- the report ------------------------------------------------------------------------------

def _versus_humans(human: Mapping[str, str], other: Mapping[str, str | None], *,
                   decisive_only: bool) -> dict[str, Any]:
    """Agreement of one labeller with the human majority, on the pairs both decided."""
    decided = {k: v for k, v in other.items() if v is not None}
    target = {k: v for k, v in human.items() if v in ("1", "2")} if decisive_only else human
    share, n = label_agreement(target, decided)
    out: dict[str, Any] = {"agreement": share, "pairs": n,
                           "abstained": sum(v is None for k, v in other.items() if k in human)}
    if decisive_only:
        out["human_tie_or_both_bad"] = sum(k in other for k, v in human.items() if v not in ("1", "2"))
    return out


def agreement_report(rows: Sequence[LabelRow], *, model_labels: Mapping[str, str] | None = None,
                     judge_labels: Mapping[str, Mapping[str, str | None]] | None = None,
                     n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Everything ``arbiter annotate agreement`` prints, as a dict (NaN where undefined).

    ``model_labels``: pair id -> "1"/"2" from the reward model, compared with the human
    majority on the pairs whose majority is "1" or "2" (an RM cannot say tie or both bad);
    ``judge_labels``: judge -> {pair id -> label, None = abstained}, compared on every pair
    with a human majority.
    """
    units = units_of(rows)
    alpha = krippendorff_alpha(units)
    lo, hi = alpha_interval(units, n_boot=n_boot, seed=seed)
    human = majority(rows)
    report: dict[str, Any] = {
        "krippendorff_alpha": alpha,
        "alpha_interval": [lo, hi],
        "alpha_undefined": alpha_undefined_reason(units),
        "bootstrap": {"resamples": n_boot, "seed": seed, "level": LEVEL, "over": "units"},
        "cohen_kappa": kappa_pairs(rows),
        "units": len(units),
        "pairable_units": sum(len(v) >= 2 for v in units.values()),
        "labels": len(rows),
        "annotators": sorted({r.annotator for r in rows}),
        "label_counts": {c: n for c, n in Counter(r.label for r in rows).most_common()},
        "human_majority": {"pairs": len(human), "no_majority": len(units) - len(human)},
    }
    if model_labels is not None:
        report["model"] = _versus_humans(human, model_labels, decisive_only=True)
    if judge_labels is not None:
        report["judges"] = {j: _versus_humans(human, v, decisive_only=False)
                            for j, v in sorted(judge_labels.items())}
    return report
