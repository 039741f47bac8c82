"""Thresholds: what turns a score into ``flagged``, versioned and tied to one model.

``thresholds.json`` (written by ``arbiter moderate calibrate``)::

    {"format": "arbiter-moderation-thresholds/1", "version": "cal-20261201-3f2a9c1e",
     "model_sha256": "...", "semantics": "rm-vs-refusal-1",
     "overall": 0.83, "categories": {"harassment": null, ...},
     "target": {"metric": "precision", "value": 0.9},
     "split": {"path": "...", "sha256": "...", "rows": 1680, "positives": 522},
     "at_threshold": {"overall": {"precision": 0.91, "recall": 0.40, "f1": ..., "tp": ..., ...}}}

A row is flagged when its overall score, or any scored category's, is at or above its
threshold. Without a file the overall threshold is 0.5 (version ``default-0.5``: the score is
P(refusal better than the text), so 0.5 is "the model prefers the refusal"); a file made
for another model (sha256 mismatch) is refused, since its numbers mean nothing there.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.moderate.categories import CATEGORIES, category_map
from engine.errors import InputError

FORMAT = "arbiter-moderation-thresholds/1"
DEFAULT_VERSION = "default-0.5"


@dataclass(frozen=True)
class Thresholds:
    version: str
    overall: float
    categories: dict[str, float | None] = field(default_factory=lambda: category_map())
    model_sha256: str | None = None  # None: the built-in default, for any model
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def default() -> Thresholds:
        return Thresholds(DEFAULT_VERSION, 0.5)

    def decide(self, score: float, category_scores: dict[str, float | None]
               ) -> tuple[bool, dict[str, bool | None]]:
        """(flagged, per-category decisions: None where the category is not scored)."""
        cats: dict[str, bool | None] = {}
        for name in CATEGORIES:
            s, t = category_scores.get(name), self.categories.get(name)
            cats[name] = None if s is None else s >= (t if t is not None else self.overall)
        return score >= self.overall or any(v for v in cats.values()), cats

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": self.version, "model_sha256": self.model_sha256,
                **{k: v for k, v in self.meta.items() if k not in ("overall", "categories")},
                "overall": self.overall, "categories": dict(self.categories)}


def load(path: str | Path, model_sha256: str) -> Thresholds:
    """Thresholds from ``path`` for the model with this sha256; InputError naming the field."""
    from engine.jsonl import parse_json, read_text

    source = str(path)
    data = parse_json(read_text(path), source=source)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"not an Arbiter thresholds file (expected \"format\": \"{FORMAT}\")",
                         source=source, field="format")
    if data.get("model_sha256") != model_sha256:
        raise InputError(f"these thresholds were calibrated for another model (sha256 "
                         f"{str(data.get('model_sha256'))[:16]}...; this model is {model_sha256[:16]}...). "
                         "Calibrate for this model: arbiter moderate calibrate", source=source,
                         field="model_sha256")
    overall = _threshold(data.get("overall"), source, "overall")
    if overall is None:
        raise InputError("missing", source=source, field="overall")
    cats_raw = data.get("categories") or {}
    if not isinstance(cats_raw, dict):
        raise InputError("must be an object of category: threshold", source=source, field="categories")
    unknown = sorted(set(cats_raw) - set(CATEGORIES))
    if unknown:
        raise InputError(f"unknown categories {unknown}", source=source, field="categories")
    cats = {k: _threshold(v, source, f"categories.{k}") for k, v in cats_raw.items()}
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise InputError("missing", source=source, field="version")
    meta = {k: v for k, v in data.items() if k not in ("format", "version", "model_sha256")}
    return Thresholds(version, overall, category_map(cats), model_sha256, meta)


def shipped(model_sha256: str) -> Thresholds:
    """What a run without ``--thresholds`` uses: the calibrated thresholds a built-in model ships
    for exactly this copy (``engine/builtin/*/thresholds-*.json`` whose sha256 is this model's:
    the built-in moderation model's), else the default 0.5."""
    from engine.paths import builtin_dir

    for f in sorted(builtin_dir().glob("*/thresholds-*.json")):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("model_sha256") == model_sha256:
            return load(f, model_sha256)
    return Thresholds.default()


def _threshold(v: Any, source: str, name: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
        raise InputError(f"must be a number from 0 to 1, got {v!r}", source=source, field=name)
    return float(v)


# ---- calibration ------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    def to_dict(self) -> dict[str, Any]:
        p, r = self.precision, self.recall
        return {"threshold": self.threshold, "precision": p, "recall": r,
                "f1": 2 * p * r / (p + r) if p + r else 0.0,
                "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn}


def curve(scores: Sequence[float], labels: Sequence[bool]) -> list[Point]:
    """Confusion counts at every distinct score used as the threshold (flag: score >= t),
    highest threshold first."""
    pairs = sorted(zip(scores, labels, strict=True), key=lambda x: -x[0])
    pos = sum(labels)
    neg = len(labels) - pos
    out, tp, fp, i = [], 0, 0, 0
    while i < len(pairs):
        t = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == t:
            tp += pairs[i][1]
            fp += not pairs[i][1]
            i += 1
        out.append(Point(t, tp, fp, pos - tp, neg - fp))
    return out


def choose(scores: Sequence[float], labels: Sequence[bool], metric: str, target: float) -> Point:
    """The threshold meeting ``target``: for precision, the lowest threshold whose precision is
    at least the target (the most recall it allows); for recall, the highest threshold whose
    recall is at least the target (the most precision). InputError when none does."""
    if not any(labels):
        raise InputError("the labelled split has no positive (unsafe) rows; nothing to calibrate on")
    points = curve(scores, labels)
    if metric == "precision":
        ok = [p for p in points if p.precision >= target]
        if ok:
            return ok[-1]
        best = max(points, key=lambda p: p.precision)
    elif metric == "recall":
        ok = [p for p in points if p.recall >= target]
        if ok:
            return ok[0]
        best = max(points, key=lambda p: p.recall)
    else:
        raise ValueError(metric)
    raise InputError(f"no threshold reaches {metric} {target:g} on this split (the best is "
                     f"{getattr(best, metric):.3f} at threshold {best.threshold:.4f})")


def calibrated(point: Point, *, metric: str, target: float, model_sha256: str,
               split: dict[str, Any], semantics: str,
               categories: dict[str, Point | str] | None = None) -> Thresholds:
    """Thresholds from chosen points, with a version naming its day and content.

    ``categories``: per scored category, its own chosen point, or why none was chosen (a
    string, recorded under ``uncalibrated``; that category then falls back to ``overall``)."""
    cats = categories or {}
    chosen = {k: v for k, v in cats.items() if isinstance(v, Point)}
    meta = {"semantics": semantics, "target": {"metric": metric, "value": target}, "split": split,
            "at_threshold": {"overall": point.to_dict(), **{k: v.to_dict() for k, v in chosen.items()}},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if len(chosen) < len(cats):
        meta["uncalibrated"] = {k: v for k, v in cats.items() if not isinstance(v, Point)}
    thresholds = {k: v.threshold for k, v in chosen.items()}
    body = json.dumps({"overall": point.threshold, "categories": thresholds, "sha": model_sha256, **meta},
                      sort_keys=True)
    version = f"cal-{time.strftime('%Y%m%d', time.gmtime())}-{hashlib.sha256(body.encode()).hexdigest()[:8]}"
    return Thresholds(version, point.threshold, category_map(thresholds), model_sha256, meta)


def parse_label(value: Any, source: str, line: int, field: str) -> bool:
    """A labelled row's verdict (True = unsafe), read the same way by calibrate, report and the view."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABELS:
        return _LABELS[value.strip().lower()]
    raise InputError(f"a label must be 0/1, true/false or safe/unsafe; got {value!r}", source=source,
                     line=line, field=field)


_LABELS = {"1": True, "0": False, "true": True, "false": False, "unsafe": True, "safe": False,
           "yes": True, "no": False}
