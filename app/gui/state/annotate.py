"""Annotate view model (Qt-free): the pair on screen, its blind order, the keys, skip and undo.

The labels live in :class:`trainer.curate.annotations.AnnotationStore` (every label committed
the moment it is given); this model only decides what is on screen and maps the screen back to
the stored order.

Blind: the screen shows the conversation, the two responses and the preference attributes,
never the source, the original label or model names. Which stored response goes on the left
is drawn per showing from ``rng`` (default :class:`random.SystemRandom`: the OS's entropy, so
nothing the annotator can see, not the pair id nor the stored order, predicts it); the draw is
recorded with the label as ``screen_swapped``.

Skip (S) records nothing: the pair goes to the end of this session's queue (it comes back
after every other pair this annotator still has to do, skipped pairs in the order they were
skipped) and is gone from that list when the session ends (a new session starts with the
store's priority order again).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from app.gui.state.events import Event
from trainer.curate.annotations import AnnotationStore, QueueItem

#: screen keys -> what they mean on screen (1/2: the left/right response is better)
KEYS: dict[str, str] = {"1": "left", "2": "right", "3": "tie", "4": "both_bad"}


def stored_label(key: str, swapped: bool) -> str:
    """The stored-order label for a screen key: 1 (left better) is "1" when the stored first
    response is on the left (not swapped), else "2"; 3 is a tie and 4 both bad either way."""
    if key not in KEYS:
        raise ValueError(f"not a label key: {key!r}")
    if key in ("1", "2"):
        left_is_first = not swapped
        return "1" if (key == "1") == left_is_first else "2"
    return "tie" if key == "3" else "both_bad"


@dataclass(frozen=True)
class Shown:
    """A pair on screen: ``swapped`` is True when the stored first response (chosen) is on the right."""

    item: QueueItem
    swapped: bool
    shown_at: float  # the clock's reading when it was shown (seconds)

    @property
    def left(self) -> str:
        p = self.item.pair
        return p.rejected if self.swapped else p.chosen

    @property
    def right(self) -> str:
        p = self.item.pair
        return p.chosen if self.swapped else p.rejected


def pairwise_agreement(labels_by_pair: dict[str, list[str]]) -> tuple[float | None, int]:
    """Raw agreement: the share of annotator pairs, within each pair with two or more labels,
    that gave the same label; (None, 0) when no pair has two labels. Returns (share, pairs of
    annotators compared)."""
    same = total = 0
    for labs in labels_by_pair.values():
        for a, b in combinations(labs, 2):
            same += a == b
            total += 1
    return (same / total if total else None), total


def agreement_summary(store: AnnotationStore) -> dict[str, Any]:
    """Pairwise raw agreement and Krippendorff's alpha (nominal; part E's
    ``trainer.curate.agreement`` when present) over the labels in force."""
    units: dict[str, list[str]] = {}
    for row in store.human_labels():
        units.setdefault(row.pair_id, []).append(row.label)
    raw, compared = pairwise_agreement(units)
    out: dict[str, Any] = {"raw": raw, "compared": compared, "alpha": None, "alpha_note": ""}
    try:
        from trainer.curate import agreement
    except ImportError:
        out["alpha_note"] = "Krippendorff's alpha needs trainer.curate.agreement"
        return out
    if compared:
        reason = getattr(agreement, "alpha_undefined_reason", lambda _u: None)(units)
        if reason:
            out["alpha_note"] = reason
        else:
            out["alpha"] = agreement.krippendorff_alpha(units)
    return out


@dataclass
class AnnotateState:
    store: AnnotationStore | None = None
    annotator: str = ""
    conflicts_mode: bool = False
    current: Shown | None = None
    #: this session's skipped pair ids, oldest skip first
    skipped: list[str] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.SystemRandom, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    changed: Event = field(default_factory=Event, repr=False, compare=False)

    # ---- the store ---------------------------------------------------------------------
    def open(self, store: AnnotationStore) -> None:
        """Use ``store`` (closing the one before) and show its next pair."""
        if self.store is not None and self.store is not store:
            self.store.close()
        self.store, self.skipped = store, []
        self.advance()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store, self.current, self.skipped = None, None, []
        self.changed.emit()

    @property
    def ready(self) -> bool:
        """A store is open and an annotator named: labels can be given."""
        return self.store is not None and bool(self.annotator.strip())

    def set_annotator(self, name: str) -> None:
        name = name.strip()
        if name != self.annotator:
            self.annotator, self.skipped = name, []
            self.advance()

    def set_conflicts_mode(self, on: bool) -> None:
        if on != self.conflicts_mode:
            self.conflicts_mode, self.skipped = on, []
            self.advance()

    # ---- the queue ---------------------------------------------------------------------
    def _show(self, item: QueueItem | None) -> None:
        self.current = None if item is None else Shown(item, self.rng.random() < 0.5, self.clock())
        self.changed.emit()

    def advance(self) -> None:
        """Show the next pair for the annotator: the store's queue first (skipped pairs passed
        over), then the skipped pairs that still need this annotator, oldest skip first."""
        if not self.ready:
            self._show(None)
            return
        assert self.store is not None
        item = self.store.next_for(self.annotator, conflicts=self.conflicts_mode, exclude=set(self.skipped))
        while item is None and self.skipped:
            pid = self.skipped.pop(0)
            if self.store.needs(pid, self.annotator, conflicts=self.conflicts_mode):
                item = self.store.get(pid)
        self._show(item)

    def answer(self, key: str, note: str = "") -> int | None:
        """Label the pair on screen with a screen key (1 left, 2 right, 3 tie, 4 both bad),
        committed at once, then show the next one. Returns the label's row id (None when
        nothing is on screen)."""
        if self.current is None or not self.ready:
            return None
        assert self.store is not None
        shown = self.current
        rid = self.store.label(shown.item.pair_id, self.annotator, stored_label(key, shown.swapped), note,
                               seconds=max(0.0, self.clock() - shown.shown_at), screen_swapped=shown.swapped)
        self.advance()
        return rid

    def skip(self) -> None:
        """S: nothing recorded; the pair goes to the end of this session's queue."""
        if self.current is None:
            return
        self.skipped.append(self.current.item.pair_id)
        self.advance()

    def undo(self) -> bool:
        """U: the annotator's last label is undone and its pair shown again (timing restarts);
        False when there is nothing to undo."""
        if not self.ready:
            return False
        assert self.store is not None
        item = self.store.undo(self.annotator)
        if item is None:
            return False
        if item.pair_id in self.skipped:
            self.skipped.remove(item.pair_id)
        self._show(item)
        return True

    # ---- what the view shows besides the pair --------------------------------------------
    def progress(self) -> dict[str, Any]:
        return self.store.progress() if self.store is not None else {}

    def agreement(self) -> dict[str, Any]:
        return agreement_summary(self.store) if self.store is not None else {}

    def attribute_lines(self) -> list[tuple[str, str]]:
        """(name, value) rows of the shown pair's preference attributes (guideline apart)."""
        if self.current is None or not self.current.item.attributes_dict:
            return []
        a = self.current.item.attributes_dict
        rows = [("Task", str(a.get("task_category", ""))), ("Objectivity", str(a.get("objectivity", ""))),
                ("Controversiality", str(a.get("controversiality", "")))]
        desired = a.get("desired_attributes") or []
        if isinstance(desired, list) and desired:
            rows.append(("Desired", ", ".join(str(x) for x in desired)))
        return [(k, v) for k, v in rows if v]

    def pair_guideline(self) -> str:
        if self.current is None or not self.current.item.attributes_dict:
            return ""
        g = self.current.item.attributes_dict.get("guideline", "")
        return g if isinstance(g, str) else ""


def general_guideline() -> str:
    """The labelling guideline of the judges' prompt (part B's ``prompts.GUIDELINE``), or ""."""
    try:
        from trainer.curate.prompts import GUIDELINE
    except ImportError:
        return ""
    return str(GUIDELINE)
