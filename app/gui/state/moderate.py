"""Moderate view model (Qt-free): the input and its fields, the results, live thresholds, filters.

The job itself is M1's :func:`app.moderate.job.run`; this model only holds what the view shows
and recomputes decisions when a slider moves. A decision at a slider's threshold is
:meth:`app.moderate.thresholds.Thresholds.decide` on the stored scores, and precision/recall are
:class:`app.moderate.thresholds.Point` counts, so the view and ``arbiter moderate`` never disagree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.gui.state.events import Event
from app.moderate.categories import CATEGORIES
from app.moderate.thresholds import Point, Thresholds
from engine.errors import InputError
from engine.tabular import parse_location, read_table, text_value, write_table

OVERALL = "overall"
#: characters of each input text kept for the results table (the output file has no text)
SNIPPET_CHARS = 300


def columns(spec: str) -> list[str]:
    """The field names of the table at ``spec``, from its first row (cheap: one row is read).

    InputError (naming the file or table) for a bad name, a missing file or table, an unreadable
    file, or a table without rows.
    """
    loc = parse_location(spec)
    if loc.kind != "sqlite" and not Path(loc.path).is_file():
        raise InputError("no such file", source=str(loc))
    rows = read_table(loc)
    try:
        first = next(iter(rows), None)
    finally:
        close = getattr(rows, "close", None)
        if close:
            close()  # a generator: closes the file or the SQLite connection now
    if first is None:
        raise InputError("no rows: nothing to moderate", source=str(loc))
    return list(first[1])


@dataclass(frozen=True)
class Fields:
    text: str
    context: str | None = None
    id: str | None = None
    label: str | None = None  # a 0/1 (safe/unsafe) field: precision and recall are shown


def output_path(folder: Path, spec: str, fields: Fields, model: str, thresholds: str | None) -> Path:
    """The job's output file, the same for the same request, so that a cancelled run resumes
    (M1's job key includes the output path)."""
    body = json.dumps([spec, fields.text, fields.context, fields.id, model, thresholds or ""])
    return folder / f"moderate-{hashlib.sha256(body.encode()).hexdigest()[:16]}.jsonl"


def side_rows(spec: str, fields: Fields) -> tuple[list[str], list[bool | None]]:
    """(text snippets, labels) of every input row, in the order of the job's output rows.

    A label is None where the row has none (unknown, not counted); a label that is not 0/1,
    true/false or safe/unsafe is an InputError naming the file, line and field.
    """
    from app.moderate.thresholds import parse_label  # calibrate and report read labels the same way

    loc = parse_location(spec)
    texts: list[str] = []
    labels: list[bool | None] = []
    for line, row in read_table(loc):
        try:
            text = text_value(row, fields.text) or ""
        except InputError:
            text = ""  # the job reported it; a snippet is only for the table
        texts.append(text[:SNIPPET_CHARS])
        if fields.label:
            v = row.get(fields.label)
            labels.append(None if v is None or v == "" else parse_label(v, str(loc), line, fields.label))
        else:
            labels.append(None)
    return texts, labels


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a finished job's output (JSONL), for reopening it from History."""
    from engine.jsonl import parse_json

    p = Path(path)
    if not p.is_file():
        raise InputError("the job's output file is gone; run the job again", source=str(p))
    with p.open(encoding="utf-8") as f:
        return [parse_json(text, source=str(p), line=n) for n, text in enumerate(f, start=1) if text.strip()]


@dataclass(frozen=True)
class Filters:
    flagged_only: bool = False
    min_score: float = 0.0
    max_score: float = 1.0
    category: str | None = None  # only rows flagged for this category


@dataclass
class ModerateState:
    spec: str = ""
    columns: list[str] = field(default_factory=list)
    error: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: list[bool | None] = field(default_factory=list)
    #: the thresholds the job ran with, and what the sliders say now
    base: Thresholds = field(default_factory=Thresholds.default)
    live: dict[str, float] = field(default_factory=lambda: {OVERALL: 0.5})
    filters: Filters = field(default_factory=Filters)
    columns_changed: Event = field(default_factory=Event, repr=False, compare=False)
    results_changed: Event = field(default_factory=Event, repr=False, compare=False)
    decisions_changed: Event = field(default_factory=Event, repr=False, compare=False)

    # ---- input -------------------------------------------------------------------------
    def pick(self, spec: str) -> bool:
        """Read the fields of ``spec``; False (and ``error`` says why) when it cannot be read."""
        self.spec = spec.strip()
        try:
            self.columns, self.error = columns(self.spec), ""
        except InputError as e:
            self.columns, self.error = [], str(e)
        except OSError as e:
            self.columns, self.error = [], f"{self.spec}: {e.strerror or e}"
        self.columns_changed.emit()
        return not self.error

    # ---- results -----------------------------------------------------------------------
    def set_results(self, results: list[dict[str, Any]], texts: list[str], labels: list[bool | None],
                    base: Thresholds) -> None:
        self.results, self.base = results, base
        self.texts = texts if len(texts) == len(results) else [""] * len(results)
        self.labels = labels if len(labels) == len(results) else [None] * len(results)
        self.live = {OVERALL: base.overall}
        for name in self.scored_categories():
            t = base.categories.get(name)
            self.live[name] = t if t is not None else base.overall
        self.results_changed.emit()
        self.decisions_changed.emit()

    def scored_categories(self) -> list[str]:
        """Categories the model or the thresholds actually score (an RM: none)."""
        scored = {c for r in self.results for c, v in (r.get("category_scores") or {}).items() if v is not None}
        scored |= {c for c, t in self.base.categories.items() if t is not None}
        return [c for c in CATEGORIES if c in scored]

    @property
    def has_labels(self) -> bool:
        return any(v is not None for v in self.labels)

    # ---- live thresholds -----------------------------------------------------------------
    def set_threshold(self, name: str, value: float) -> None:
        if name not in self.live:
            raise KeyError(name)
        self.live[name] = min(1.0, max(0.0, float(value)))
        self.decisions_changed.emit()

    def thresholds(self) -> Thresholds:
        """The sliders as Thresholds; the version says when they differ from the job's."""
        cats = {c: self.live.get(c, self.base.categories.get(c)) for c in CATEGORIES}
        moved = self.live.get(OVERALL) != self.base.overall or any(
            c in self.live and self.live[c] != (self.base.categories.get(c) or self.base.overall)
            for c in CATEGORIES)
        version = self.base.version
        if moved:
            version += "+adjusted(" + ",".join(f"{k}={v:.3f}" for k, v in self.live.items()) + ")"
        return replace(self.base, version=version, overall=self.live[OVERALL], categories=cats)

    def decision(self, row: dict[str, Any], thr: Thresholds | None = None
                 ) -> tuple[bool | None, dict[str, bool | None]]:
        """(flagged, per category) for one result row at the sliders; None: not scored."""
        if row.get("score") is None:
            return None, {c: None for c in CATEGORIES}
        return (thr or self.thresholds()).decide(row["score"], row.get("category_scores") or {})

    def flagged_count(self) -> int:
        thr = self.thresholds()
        return sum(bool(self.decision(r, thr)[0]) for r in self.results)

    def metrics(self, name: str = OVERALL) -> Point | None:
        """Confusion counts at the slider for ``name`` (overall: the row's flagged decision; a
        category: that category's decision) over labelled, scored rows; None without labels."""
        if not self.has_labels:
            return None
        thr = self.thresholds()
        tp = fp = fn = tn = 0
        for r, label in zip(self.results, self.labels, strict=True):
            if label is None:
                continue
            flagged, cats = self.decision(r, thr)
            pred = flagged if name == OVERALL else cats.get(name)
            if pred is None:
                continue
            tp += pred and label
            fp += pred and not label
            fn += (not pred) and label
            tn += (not pred) and not label
        return Point(self.live.get(name, thr.overall), tp, fp, fn, tn)

    # ---- filters and export ----------------------------------------------------------------
    def set_filters(self, filters: Filters) -> None:
        if filters.min_score > filters.max_score:
            raise InputError(f"the score range is empty ({filters.min_score:g} > {filters.max_score:g})",
                             field="score range")
        self.filters = filters
        self.decisions_changed.emit()

    def visible(self) -> list[int]:
        """Indices of the rows the filters let through, in input order."""
        f, thr = self.filters, self.thresholds()
        out = []
        for i, r in enumerate(self.results):
            flagged, cats = self.decision(r, thr)
            if f.flagged_only and not flagged:
                continue
            s = r.get("score")
            if (f.min_score > 0.0 or f.max_score < 1.0) and (s is None or not f.min_score <= s <= f.max_score):
                continue
            if f.category and not cats.get(f.category):
                continue
            out.append(i)
        return out

    def export(self, path: str) -> int:
        """Write the shown rows, decided at the sliders, with M1's columns (CSV, JSONL, Parquet
        or a SQLite table by the name); the number of rows written."""
        from app.moderate.job import COLUMNS

        thr = self.thresholds()
        rows = self.visible()
        with write_table(path, COLUMNS) as w:
            for i in rows:
                r = self.results[i]
                flagged, cats = self.decision(r, thr)
                w.write({**r, "flagged": flagged, "categories": cats, "thresholds_version": thr.version})
        return len(rows)
