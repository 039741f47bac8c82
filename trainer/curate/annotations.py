"""The human annotation queue and its labels, in SQLite (no Qt: the view, the CLI and stage 1 share it).

Two tables live in a curation run's ``curation.db`` (beside part C's ``pairs``/``votes``/...)
or in a DB of their own for a pairs file (``<file>.annotate.db``):

- ``queue``: one row per pair to label (its JSON, its attributes, a priority key, how many
  annotators it needs: ``overlap``).
- ``labels``: one row per label given, committed the moment it is given, so killing the app
  loses nothing and reopening continues the queue. An undo marks the row ``undone`` instead
  of deleting it: the history of what was pressed stays.

Labels are in the pair's *stored* order (``"1"``: the stored first response, ``chosen``, is
better; ``"2"``, ``"tie"``, ``"both_bad"``), never in screen order: the view maps its keys.

A pair is a *conflict* when it has labels from two or more annotators and no label has a
strict majority (1 vs 2 is a conflict; 1, 1, 2 is not: 1 has 2 of 3). A conflict is resolved
by more opinions (the conflicts queue) or stays out of the gold set.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from engine.errors import InputError
from engine.store import StoreError, connect, write_transaction
from trainer.data.record import PreferencePair

if TYPE_CHECKING:
    from trainer.curate.attributes import Attributes

#: the label vocabulary, in stored order (see the module docstring)
LABELS: tuple[str, ...] = ("1", "2", "tie", "both_bad")
#: pairs written per transaction when a pairs file is imported (bounds a crash's lost work)
IMPORT_BATCH = 500

_SCHEMA = """
create table if not exists queue (
    pair_id text primary key,
    seq integer not null,            -- insertion order: ties in priority keep it
    pair text not null,              -- PreferencePair.to_dict() as JSON
    attributes text,                 -- Attributes.to_dict() as JSON, or null
    priority text not null,          -- the priority key as a JSON list, lower first
    overlap integer not null,        -- annotators the pair needs
    source text not null default ''
);
create table if not exists labels (
    id integer primary key autoincrement,
    pair_id text not null,
    annotator text not null,
    label text not null,             -- '1' | '2' | 'tie' | 'both_bad', stored order
    note text not null default '',
    seconds real,                    -- from showing the pair to answering (seconds)
    screen_swapped integer not null, -- 1 when the stored first response was shown on the right
    at text not null,                -- when it was given (ISO 8601, UTC)
    undone integer not null default 0
);
-- covers the cache check and the totals (count, max(seq), sum(overlap)) without reading
-- the pairs' JSON: at 100k pairs that is a scan of ~1 MB instead of ~150 MB
create index if not exists queue_seq_overlap on queue (seq, overlap);
create index if not exists labels_pair on labels (pair_id, undone);
create index if not exists labels_annotator on labels (annotator, undone, id);
create table if not exists annotation_meta (key text primary key, value text not null);
"""


class LabelRow(NamedTuple):
    """One human label in stored order (the rows of ``arbiter annotate agreement``'s input)."""

    pair_id: str
    annotator: str
    label: str


@dataclass(frozen=True)
class QueueItem:
    """A pair as the queue hands it out. ``attributes_dict`` is the raw dict (always there
    when attributes were stored); ``attributes`` is it parsed, when part B's module is present."""

    pair: PreferencePair
    attributes: Attributes | None
    attributes_dict: dict[str, Any] | None
    priority: tuple[Any, ...]
    overlap: int
    labels: int  # active (not undone) labels so far
    conflict: bool

    @property
    def pair_id(self) -> str:
        return self.pair.id


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _attrs_dict(attributes: Any) -> dict[str, Any] | None:
    """An ``Attributes``, a dict or None, as a JSON-able dict or None."""
    if attributes is None:
        return None
    if isinstance(attributes, dict):
        return attributes
    to_dict = getattr(attributes, "to_dict", None)
    if to_dict is None:
        raise TypeError(f"attributes must be Attributes, a dict or None; got {type(attributes).__name__}")
    return to_dict()


def _parse_attrs(d: dict[str, Any] | None) -> Attributes | None:
    """The stored dict as part B's ``Attributes``; None when absent, unparseable or the
    module is not there (the view then shows the raw dict)."""
    if d is None:
        return None
    try:
        from trainer.curate.attributes import Attributes
    except ImportError:
        return None
    try:
        return Attributes.from_dict(d)
    except (InputError, KeyError, TypeError, ValueError):
        return None


def _sort_key(priority: Sequence[Any]) -> tuple[tuple[int, Any], ...]:
    """A total order on priority keys of mixed element types: numbers (bools too) before
    strings before anything else, so keys from different callers never fail to compare."""
    out: list[tuple[int, Any]] = []
    for x in priority:
        if isinstance(x, (bool, int, float)) and not (isinstance(x, float) and math.isnan(x)):
            out.append((0, float(x)))
        elif isinstance(x, str):
            out.append((1, x))
        else:
            out.append((2, json.dumps(x, sort_keys=True)))
    return tuple(out)


def majority(labels: Sequence[str]) -> str | None:
    """The label with a strict majority (more than half), or None."""
    if not labels:
        return None
    top, n = Counter(labels).most_common(1)[0]
    return top if n * 2 > len(labels) else None


def _is_conflict(labels: Sequence[str]) -> bool:
    return len(labels) >= 2 and majority(labels) is None


def _wanted(given: Sequence[tuple[str, str]], overlap: int, annotator: str, conflicts: bool) -> bool:
    """A pair with these (annotator, label)s is for ``annotator``: not labelled by them, and
    short of its overlap (or, in the conflicts queue, a conflict)."""
    if any(who == annotator for who, _ in given):
        return False
    labs = [lab for _, lab in given]
    return _is_conflict(labs) if conflicts else len(labs) < overlap


class AnnotationStore:
    """The queue and the labels of one DB; safe to share between the GUI thread and workers
    (one connection, writes serialised by a lock; other processes wait on SQLite's lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{self.path.parent}: cannot create the folder ({e.strerror})") from None
        try:
            self._conn = connect(self.path, check_same_thread=False)
        except StoreError as e:  # engine.store's message is about arbiter.db: say what this file is
            raise _not_a_db(self.path, e.__cause__ or e) from None
        self._lock = threading.RLock()
        self._order: list[tuple[str, int]] | None = None  # (pair id, overlap) in priority order
        self._order_version: tuple[Any, ...] = ()
        try:
            with self._lock, write_transaction(self._conn):
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        self._conn.execute(statement)
        except sqlite3.DatabaseError as e:
            self._conn.close()
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise
            raise _not_a_db(self.path, e) from None

    # ---- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_pairs(cls, pairs_file: str | Path, db_path: str | Path | None = None, overlap: int = 1, *,
                   progress: Callable[[int], None] | None = None) -> AnnotationStore:
        """A store for any pairs file in the trainer's formats (``trainer.data.importers.load``),
        at ``db_path`` (default ``<file>.annotate.db`` beside it). Pairs go in file order; an
        existing DB keeps its labels (pairs already queued are left as they are), so opening
        the same file again continues. ``progress(n)`` is called with the pairs read so far.

        InputError (file:line: field) for a malformed file; InputError for two different pairs
        under one id.
        """
        from trainer.data.importers import load

        pairs_file = Path(pairs_file)
        db = Path(db_path) if db_path is not None else default_db_path(pairs_file)
        store = cls(db)
        try:
            store._import(pairs_file, load(pairs_file), overlap, progress)
        except BaseException:
            store.close()
            raise
        return store

    def _import(self, pairs_file: Path, pairs: Iterator[PreferencePair], overlap: int,
                progress: Callable[[int], None] | None) -> None:
        seen: dict[str, str] = {}  # id -> content key, to catch two pairs under one id
        batch: list[tuple[PreferencePair, Any, tuple[Any, ...]]] = []
        n = 0
        for n, p in enumerate(pairs, start=1):
            if not p.id:
                p = replace(p, id=p.key()[:16])
            key = p.key()
            if seen.setdefault(p.id, key) != key:
                raise InputError(f"pair #{n}: id {p.id!r} is used by an earlier, different pair; "
                                 "ids must be unique", source=str(pairs_file), field="id")
            attrs = _attributes_of(p)
            batch.append((p, attrs, (*_priority_of(attrs), n)))
            if len(batch) >= IMPORT_BATCH:
                self.enqueue(batch, overlap)
                batch.clear()
                if progress:
                    progress(n)
        if batch:
            self.enqueue(batch, overlap)
        if progress:
            progress(n)
        self.set_meta("imported", json.dumps({"file": str(pairs_file), "pairs": n, "at": _now()}))

    # ---- meta ----------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("select value from annotation_meta where key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, write_transaction(self._conn):
            self._conn.execute("insert or replace into annotation_meta (key, value) values (?, ?)", [key, value])

    # ---- the queue -----------------------------------------------------------------------
    def enqueue(self, pairs: Sequence[tuple[PreferencePair, Attributes | dict[str, Any] | None, tuple[Any, ...]]],
                overlap: int, *, source: str | None = None) -> int:
        """Queue pairs: (pair, attributes, priority key; lower first) each, ``overlap``
        annotators per pair. A pair id already queued is left as it is (its labels stay).
        ``source`` overrides each pair's own source in the queue table. Returns how many
        were added. One transaction: all or nothing."""
        if overlap < 1:
            raise InputError(f"must be at least 1; got {overlap}", field="overlap")
        added = 0
        with self._lock, write_transaction(self._conn):
            seq = self._conn.execute("select coalesce(max(seq), 0) from queue").fetchone()[0]
            for p, attrs, priority in pairs:
                if not p.id:
                    raise InputError("a queued pair needs an id", field="id")
                seq += 1
                cur = self._conn.execute(
                    "insert or ignore into queue (pair_id, seq, pair, attributes, priority, overlap, source) "
                    "values (?, ?, ?, ?, ?, ?, ?)",
                    [p.id, seq, json.dumps(p.to_dict(), ensure_ascii=False),
                     None if attrs is None else json.dumps(_attrs_dict(attrs), ensure_ascii=False),
                     json.dumps(list(priority)), overlap, p.source if source is None else source])
                added += cur.rowcount
            self._order = None
        return added

    def set_overlap(self, overlap: int) -> None:
        """Every queued pair now needs ``overlap`` annotators (the view's Overlap setting)."""
        if overlap < 1:
            raise InputError(f"must be at least 1; got {overlap}", field="overlap")
        with self._lock, write_transaction(self._conn):
            self._conn.execute("update queue set overlap = ?", [overlap])
            self._order = None

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("select count(*) from queue").fetchone()[0]

    def _ordered(self) -> list[tuple[str, int]]:
        """(pair id, overlap) of every queued pair in priority order, cached: at 100k pairs the
        sort costs a tenth of a second, and the view asks after every key."""
        with self._lock:
            # another process (a stage-1 run) may enqueue into the same DB or change the
            # overlap: the cache is keyed on (rows, last seq, sum of overlaps)
            version = tuple(self._conn.execute("select count(*), max(seq), sum(overlap) from queue").fetchone())
            if self._order is None or self._order_version != version:
                rows = self._conn.execute("select pair_id, priority, seq, overlap from queue").fetchall()
                rows.sort(key=lambda r: (_sort_key(json.loads(r[1])), r[2]))
                self._order, self._order_version = [(r[0], r[3]) for r in rows], version
            return self._order

    def _ordered_ids(self) -> list[str]:
        return [pid for pid, _ in self._ordered()]

    def _active(self) -> dict[str, list[tuple[str, str]]]:
        """pair id -> [(annotator, label)] of the labels not undone, oldest first."""
        out: dict[str, list[tuple[str, str]]] = {}
        with self._lock:
            rows = self._conn.execute(
                "select pair_id, annotator, label from labels where undone = 0 order by id").fetchall()
        for pid, who, lab in rows:
            out.setdefault(pid, []).append((who, lab))
        return out

    def get(self, pair_id: str) -> QueueItem | None:
        """The queued pair ``pair_id``, or None."""
        with self._lock:
            row = self._conn.execute(
                "select pair, attributes, priority, overlap from queue where pair_id = ?", [pair_id]).fetchone()
            labs = [r[0] for r in self._conn.execute(
                "select label from labels where pair_id = ? and undone = 0", [pair_id])]
        if row is None:
            return None
        attrs = json.loads(row[1]) if row[1] is not None else None
        return QueueItem(pair=PreferencePair.from_dict(json.loads(row[0])), attributes=_parse_attrs(attrs),
                         attributes_dict=attrs, priority=tuple(json.loads(row[2])), overlap=row[3],
                         labels=len(labs), conflict=_is_conflict(labs))

    def next_for(self, annotator: str, *, conflicts: bool = False,
                 exclude: Collection[str] = ()) -> QueueItem | None:
        """The highest-priority pair ``annotator`` has not labelled that still needs labels
        (fewer than its overlap), or with ``conflicts=True`` the highest-priority conflict
        they have not labelled (one more opinion can resolve it). ``exclude``: ids to pass
        over (the session's skipped pairs). None when there is nothing left."""
        annotator = _check_annotator(annotator)
        active = self._active()
        for pid, overlap in self._ordered():
            if pid not in exclude and _wanted(active.get(pid, []), overlap, annotator, conflicts):
                return self.get(pid)
        return None

    def needs(self, pair_id: str, annotator: str, *, conflicts: bool = False) -> bool:
        """Whether :meth:`next_for` could hand ``pair_id`` to ``annotator`` (a skipped pair
        comes back only while it does)."""
        annotator = _check_annotator(annotator)
        with self._lock:
            row = self._conn.execute("select overlap from queue where pair_id = ?", [pair_id]).fetchone()
            given = self._conn.execute("select annotator, label from labels where pair_id = ? and undone = 0",
                                       [pair_id]).fetchall()
        return row is not None and _wanted(given, row[0], annotator, conflicts)

    # ---- labels --------------------------------------------------------------------------
    def label(self, pair_id: str, annotator: str, label: str, note: str = "", seconds: float | None = None,
              screen_swapped: bool = False) -> int:
        """Record ``annotator``'s ``label`` (stored order) for ``pair_id``; committed before it
        returns. A second label by the same annotator for the same pair replaces the first
        (the first is marked undone). Returns the row id."""
        annotator = _check_annotator(annotator)
        if label not in LABELS:
            raise InputError(f"must be one of {', '.join(LABELS)}; got {label!r}", field="label")
        if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
            raise InputError(f"must be a non-negative number of seconds; got {seconds!r}", field="seconds")
        with self._lock, write_transaction(self._conn):
            if self._conn.execute("select 1 from queue where pair_id = ?", [pair_id]).fetchone() is None:
                raise InputError(f"no queued pair with id {pair_id!r}", field="pair_id")
            self._conn.execute("update labels set undone = 1 where pair_id = ? and annotator = ? and undone = 0",
                               [pair_id, annotator])
            cur = self._conn.execute(
                "insert into labels (pair_id, annotator, label, note, seconds, screen_swapped, at) "
                "values (?, ?, ?, ?, ?, ?, ?)",
                [pair_id, annotator, label, note or "", seconds, int(bool(screen_swapped)), _now()])
            rid = cur.lastrowid
        assert rid is not None
        return rid

    def undo(self, annotator: str) -> QueueItem | None:
        """Mark ``annotator``'s last label (not undone yet) undone and return its pair, to be
        shown again; None when they have nothing to undo. Committed before it returns."""
        annotator = _check_annotator(annotator)
        with self._lock, write_transaction(self._conn):
            row = self._conn.execute(
                "select id, pair_id from labels where annotator = ? and undone = 0 order by id desc limit 1",
                [annotator]).fetchone()
            if row is None:
                return None
            self._conn.execute("update labels set undone = 1 where id = ?", [row[0]])
        return self.get(row[1])

    def label_rows(self, *, include_undone: bool = False) -> list[dict[str, Any]]:
        """Every label row as a dict (for export and the view's tables), oldest first."""
        where = "" if include_undone else "where undone = 0"
        with self._lock:
            cur = self._conn.execute(
                f"select id, pair_id, annotator, label, note, seconds, screen_swapped, at, undone "
                f"from labels {where} order by id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def human_labels(self) -> list[LabelRow]:
        """The labels in force (not undone), one per (pair, annotator), oldest first."""
        return [LabelRow(pid, who, lab) for pid, given in self._active().items() for who, lab in given]

    def annotators(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute(
                "select distinct annotator from labels where undone = 0 order by annotator")]

    # ---- summaries -----------------------------------------------------------------------
    def conflicts(self) -> list[str]:
        """Ids of the pairs whose annotators disagree (no strict majority), in priority order."""
        active = self._active()
        return [pid for pid, _ in self._ordered() if _is_conflict([lab for _, lab in active.get(pid, [])])]

    def progress(self) -> dict[str, Any]:
        """``total`` pairs; ``labelled`` (at least one label), ``complete`` (as many labels as
        their overlap); ``labels`` in force; ``needed`` (sum of overlaps); ``conflicts``;
        ``per_annotator`` (labels each)."""
        active = self._active()
        with self._lock:
            total, needed = self._conn.execute("select count(*), coalesce(sum(overlap), 0) from queue").fetchone()
            # only labelled pairs can be complete: their overlaps are all that is read
            overlaps = dict(self._conn.execute(
                "select pair_id, overlap from queue where pair_id in "
                "(select distinct pair_id from labels where undone = 0)").fetchall())
        per: Counter[str] = Counter(who for given in active.values() for who, _ in given)
        return {
            "total": total,
            "labelled": len(overlaps),
            "complete": sum(1 for pid, k in overlaps.items() if len(active.get(pid, [])) >= k),
            "labels": sum(per.values()),
            "needed": needed,
            "conflicts": sum(1 for pid in overlaps if _is_conflict([lab for _, lab in active.get(pid, [])])),
            "per_annotator": dict(sorted(per.items())),
        }

    def gold_pairs(self, *, min_labels: int | None = None) -> Iterator[PreferencePair]:
        """The human-labelled pairs as gold, in priority order: the strict-majority label of
        each pair with at least ``min_labels`` labels (default: its overlap). ``"1"`` keeps
        (chosen, rejected), ``"2"`` swaps them, ``"tie"`` keeps the order with ``tie=True``;
        ``both_bad`` and conflicts are left out. ``label_origin="human"``, ``labellers`` the
        annotators; provenance (source, original order, every label) in
        ``attributes["curation"]``."""
        active = self._active()
        for pid in self._ordered_ids():
            given = active.get(pid, [])
            item = self.get(pid) if given else None
            if item is None:
                continue
            need = item.overlap if min_labels is None else min_labels
            win = majority([lab for _, lab in given])
            if len(given) < max(need, 1) or win is None or win == "both_bad":
                continue
            yield _gold(item, given, win)


def _gold(item: QueueItem, given: list[tuple[str, str]], win: str) -> PreferencePair:
    p = item.pair
    provenance = {
        "source": p.source,
        "original_label_origin": p.label_origin,
        "original_labellers": list(p.labellers),
        "agrees_with_original": win == "1",
        "human_labels": [{"annotator": who, "label": lab} for who, lab in given],
        "majority": win,
        "preference_attributes": item.attributes_dict,
    }
    swap = win == "2"
    return replace(
        p,
        chosen=p.rejected if swap else p.chosen,
        rejected=p.chosen if swap else p.rejected,
        label_origin="human",
        labellers=tuple(sorted({who for who, _ in given})),
        attributes={**p.attributes, "curation": provenance},
        tie=win == "tie",
    )


def _attributes_of(p: PreferencePair) -> dict[str, Any] | None:
    """The preference attributes a pairs file carries (a curation export keeps them in
    ``attributes["curation"]["preference_attributes"]``; a file may also hold the five keys
    in ``attributes`` itself), or None."""
    cur = p.attributes.get("curation")
    cand = cur.get("preference_attributes") if isinstance(cur, dict) else None
    if cand is None and "task_category" in p.attributes:
        cand = {k: p.attributes[k] for k in ("task_category", "objectivity", "controversiality",
                                              "desired_attributes", "guideline") if k in p.attributes}
    return cand if isinstance(cand, dict) and _parse_attrs(cand) is not None else None


def _priority_of(attrs: dict[str, Any] | None) -> tuple[Any, ...]:
    """Part B's queue order (objective, low controversy first) for imported pairs; file order
    breaks ties (the caller appends the pair's number)."""
    try:
        from trainer.curate.attributes import queue_priority
    except ImportError:
        return ()
    return tuple(queue_priority(_parse_attrs(attrs)))


def _not_a_db(path: Path, e: BaseException) -> StoreError:
    return StoreError(f"{path}: cannot be read as an annotation database ({e}); open a curation run's "
                      "curation.db, an annotation DB or a pairs file")


def _check_annotator(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise InputError("an annotator name is needed", field="annotator")
    return name


def default_db_path(pairs_file: str | Path) -> Path:
    """``<file>.annotate.db`` beside a pairs file."""
    p = Path(pairs_file)
    return p.with_name(p.name + ".annotate.db")


def open_store(path: str | Path, overlap: int = 1, *, db_path: str | Path | None = None,
               progress: Callable[[int], None] | None = None) -> AnnotationStore:
    """What the Open button means: a curation run folder (its ``curation.db``), an existing
    annotation DB (``.db``), or a pairs file (imported into ``db_path`` or beside it)."""
    p = Path(path)
    if p.is_dir():
        db = p / "curation.db"
        if not db.is_file():
            raise InputError("not a curation run folder (no curation.db in it)", source=str(p))
        return AnnotationStore(db)
    if not p.is_file():
        raise InputError("no such file", source=str(p))
    if p.suffix in (".db", ".sqlite", ".sqlite3"):
        return AnnotationStore(p)
    return AnnotationStore.from_pairs(p, db_path, overlap, progress=progress)
