"""The Annotate view (pytest-qt, offscreen) on real pairs files and real SQLite DBs.

Every test drives the view as a user does: the keys 1-4, S and U on the view, the note field,
the annotator's name, Open on the app's worker. The store's rows are then read back with a
separate sqlite3 connection, so a label that was not committed cannot pass.
"""

from __future__ import annotations

import json
import random
import sqlite3

import pytest

pytest.importorskip("PySide6")
from PySide6.QtCore import Qt  # noqa: E402

from app.gui.state.annotate import AnnotateState, pairwise_agreement, stored_label  # noqa: E402
from tests.test_gui_app import HeldJob, make_window, run_job  # noqa: E402,F401  (fixture)
from trainer.curate.annotations import AnnotationStore, default_db_path  # noqa: E402
from trainer.data.record import pair, write_pairs  # noqa: E402

SECRET = "SECRET-SOURCE-gpt-9000"  # a source/model name that must never be on screen


def _pairs(n: int, attrs: dict | None = None) -> list:
    return [pair(f"question {i}", f"chosen answer {i}", f"rejected answer {i}", id=f"p{i:03d}",
                 source=SECRET, labellers=(SECRET,), attributes=dict(attrs or {})) for i in range(n)]


def _file(tmp_path, n: int = 3, name: str = "pairs.jsonl", attrs: dict | None = None):
    path = tmp_path / name
    write_pairs(_pairs(n, attrs), path)
    return path


def _labels(db) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute("select pair_id, annotator, label, note, screen_swapped, undone "
                         "from labels order by id").fetchall()


class Clock:
    """A clock the test moves by hand: the recorded seconds are known, no wall clock involved."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def annotate(qtbot, make_window):  # noqa: F811
    """(window, view) with the Annotate page shown and a seeded blind order."""
    w = make_window()
    w.show_page("Annotate")
    v = w.annotate
    v.state.rng = random.Random(7)
    return w, v


def _open(qtbot, w, v, path, name: str = "ann") -> None:
    v.annotator.setText(name)
    v._annotator_changed()
    run_job(qtbot, w, lambda: v.open_path(str(path)))
    assert v.state.store is not None, v.message.text()


def _expect(v, key: str) -> str:
    """The stored label that screen key ``key`` must produce for the pair on screen."""
    shown = v.state.current
    if key in ("3", "4"):
        return {"3": "tie", "4": "both_bad"}[key]
    better = v.left.toPlainText() if key == "1" else v.right.toPlainText()
    return "1" if better == shown.item.pair.chosen else "2"


# ---- the model, without Qt ----------------------------------------------------------------------

def test_the_state_model_does_not_import_qt():
    import subprocess
    import sys

    code = ("import sys, app.gui.state.annotate; "
            "sys.exit(any(k.split('.')[0] in ('PySide6', 'torch', 'llama_cpp') for k in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_screen_keys_map_to_the_stored_order():
    assert [stored_label(k, False) for k in "1234"] == ["1", "2", "tie", "both_bad"]
    assert [stored_label(k, True) for k in "1234"] == ["2", "1", "tie", "both_bad"]
    with pytest.raises(ValueError):
        stored_label("5", False)


def test_pairwise_agreement():
    assert pairwise_agreement({"a": ["1"], "b": ["2"]}) == (None, 0)
    # a: 1 pair of annotators, same; b: 3 pairs, 1 same (1,1) -> 2 of 4
    assert pairwise_agreement({"a": ["1", "1"], "b": ["1", "1", "2"]}) == (0.5, 4)


def test_state_records_the_seconds_from_showing_to_answering(tmp_path):
    clock = Clock()
    store = AnnotationStore.from_pairs(_file(tmp_path), tmp_path / "a.db")
    st = AnnotateState(annotator="ann", rng=random.Random(0), clock=clock)
    st.open(store)
    clock.t += 4.5
    st.answer("3")
    clock.t += 1.25
    st.answer("4")
    assert [r["seconds"] for r in store.label_rows()] == [4.5, 1.25]
    st.close()


# ---- the view -----------------------------------------------------------------------------------

def test_annotate_is_a_page(annotate):
    w, v = annotate
    assert w.stack.currentWidget() is v
    assert w.nav.currentItem().text() == "Annotate"


def test_keyboard_labelling_stores_the_right_label(qtbot, annotate, tmp_path):
    w, v = annotate
    src = _file(tmp_path, 4)
    _open(qtbot, w, v, src)
    db = default_db_path(src)
    assert v.state.current.item.pair_id == "p000" and "question 0" in v.conversation.toPlainText()
    expected = []
    for key in "1234":
        pid = v.state.current.item.pair_id
        expected.append((pid, "ann", _expect(v, key), "note " + key if key == "2" else "",
                         int(v.state.current.swapped), 0))
        if key == "2":
            qtbot.keyClicks(v.note, "note 2")
            qtbot.keyClick(v.note, Qt.Key.Key_Return)  # back to the keys
        qtbot.keyClick(v, key)
    assert _labels(db) == expected
    assert v.state.current is None and "Nothing left" in v.message.text()
    assert "Labelled 4 / 4" in v.progress_label.text()


def test_a_digit_typed_in_the_note_is_not_a_label(qtbot, annotate, tmp_path):
    w, v = annotate
    src = _file(tmp_path, 2)
    _open(qtbot, w, v, src)
    v.note.setFocus()
    qtbot.keyClicks(v.note, "1 and 2")
    assert v.note.text() == "1 and 2" and _labels(default_db_path(src)) == []


def test_undo_brings_the_pair_back(qtbot, annotate, tmp_path):
    w, v = annotate
    src = _file(tmp_path, 3)
    _open(qtbot, w, v, src)
    qtbot.keyClick(v, "1")
    qtbot.keyClick(v, "2")
    assert v.state.current.item.pair_id == "p002"
    qtbot.keyClick(v, "u")
    assert v.state.current.item.pair_id == "p001"
    qtbot.keyClick(v, "3")
    rows = _labels(default_db_path(src))
    assert [(r[0], r[2] if r[2] in ("tie",) else "x", r[5]) for r in rows] == \
        [("p000", "x", 0), ("p001", "x", 1), ("p001", "tie", 0)]
    assert v.state.current.item.pair_id == "p002"


def test_skip_records_nothing_and_the_pair_comes_back_at_the_end(qtbot, annotate, tmp_path):
    w, v = annotate
    src = _file(tmp_path, 3)
    _open(qtbot, w, v, src)
    qtbot.keyClick(v, "s")
    assert v.state.current.item.pair_id == "p001"
    qtbot.keyClick(v, "3")
    assert v.state.current.item.pair_id == "p002"
    qtbot.keyClick(v, "3")
    assert v.state.current.item.pair_id == "p000"  # the skipped one, after the rest
    assert [r[0] for r in _labels(default_db_path(src))] == ["p001", "p002"]


def test_a_label_survives_a_restart_and_the_queue_continues(qtbot, make_window, tmp_path):  # noqa: F811
    src = _file(tmp_path, 3)
    w = make_window()
    v = w.annotate
    _open(qtbot, w, v, src, name="ann")
    qtbot.keyClick(v, "1")
    first = _labels(default_db_path(src))
    w.shutdown()  # as the app closing; every label is in the DB already
    w.close()
    w2 = make_window()
    v2 = w2.annotate
    assert v2.annotator.text() == "ann"  # the name is remembered
    run_job(qtbot, w2, lambda: v2.open_path(str(src)))
    assert v2.state.current.item.pair_id == "p001"
    assert _labels(default_db_path(src)) == first
    assert "Labelled 1 / 3" in v2.progress_label.text()


def test_the_order_on_screen_is_blind_and_the_stored_label_follows_it(qtbot, annotate, tmp_path):
    w, v = annotate
    attrs = {"task_category": "math", "objectivity": "objective", "controversiality": "low",
             "desired_attributes": ["correct"], "guideline": "check the sums"}
    n = 40
    src = _file(tmp_path, n, attrs=attrs)
    _open(qtbot, w, v, src)
    swaps = []
    from PySide6.QtWidgets import QLabel, QLineEdit, QPlainTextEdit

    for _ in range(n):
        shown = v.state.current
        on_screen = " ".join([x.toPlainText() for x in v.findChildren(QPlainTextEdit)]
                             + [x.text() for x in v.findChildren(QLabel)] + [x.text() for x in v.findChildren(QLineEdit)])
        assert SECRET not in on_screen  # blind: no source, no labellers, no model names
        assert "check the sums" in v.pair_guideline.text() and "math" in v.attributes.text()
        left_is_chosen = v.left.toPlainText() == shown.item.pair.chosen
        assert left_is_chosen == (not shown.swapped)
        swaps.append(shown.swapped)
        qtbot.keyClick(v, "1")  # left better
    rows = _labels(default_db_path(src))
    assert len(rows) == n
    assert set(swaps) == {True, False}  # both screen orders occur
    for (_pid, _who, label, _note, swapped, _undone), s in zip(rows, swaps, strict=True):
        assert swapped == int(s) and label == ("2" if s else "1")


def test_the_order_is_not_the_stored_order_nor_the_id(tmp_path):
    """Two sessions on the same pairs draw different screen orders (the default rng is the OS's)."""
    src = _file(tmp_path, 40)
    draws = []
    for k in range(2):
        store = AnnotationStore.from_pairs(src, tmp_path / f"s{k}.db")
        st = AnnotateState(annotator="ann")
        st.open(store)
        seq = []
        while st.current is not None:
            seq.append(st.current.swapped)
            st.answer("3")
        draws.append(seq)
        st.close()
    assert draws[0] != draws[1]  # equal with probability 2**-40


def test_conflicts_queue_in_the_view(qtbot, annotate, tmp_path):
    w, v = annotate
    src = _file(tmp_path, 2)
    with AnnotationStore.from_pairs(src, overlap=2) as s:
        s.label("p000", "ann", "1")
        s.label("p000", "bob", "2")  # a conflict
        s.label("p001", "ann", "1")
        s.label("p001", "bob", "1")
    _open(qtbot, w, v, src, name="cy")
    assert v.overlap.value() == 2
    assert v.state.current is None and "1 pair(s) are in conflict" in v.message.text()
    assert "Krippendorff" in v.agreement_label.text() and "raw 0.500" in v.agreement_label.text()
    v.conflicts.setChecked(True)
    assert v.state.current.item.pair_id == "p000"
    qtbot.keyClick(v, "1")
    assert _labels(default_db_path(src))[-1][:2] == ("p000", "cy")
    assert v.state.current is None and "No conflicts left" in v.message.text()


def test_overlap_setting_asks_for_more_annotators(qtbot, annotate, tmp_path):
    w, v = annotate
    src = _file(tmp_path, 1)
    with AnnotationStore.from_pairs(src) as s:
        s.label("p000", "ann", "1")
    _open(qtbot, w, v, src, name="bob")
    assert v.state.current is None
    v.overlap.setValue(2)
    assert v.state.current.item.pair_id == "p000"


def test_a_malformed_pairs_file_is_a_banner_naming_the_line(qtbot, annotate, tmp_path):
    w, v = annotate
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_pairs(1)[0].to_dict()) + "\n" + '{"conversation": "hi", "chosen": 1}\n',
                   encoding="utf-8")
    v.annotator.setText("ann")
    run_job(qtbot, w, lambda: v.open_path(str(bad)))
    assert f"{bad}:2:" in w.banner.label.text() and "chosen" in w.banner.label.text()
    assert f"{bad}:2:" in v.message.text()
    assert v.state.store is None
    # still usable
    _open(qtbot, w, v, _file(tmp_path, 1))
    assert v.state.current is not None


def test_keys_before_opening_say_what_to_do(qtbot, annotate):
    _w, v = annotate
    qtbot.keyClick(v, "1")
    assert "Open a pairs file" in v.message.text()


def test_a_cancelled_import_says_what_is_kept(qtbot, annotate, tmp_path):
    w, v = annotate
    src = _file(tmp_path, 1200)  # the import reports after each 500 pairs
    hold = HeldJob(w)
    try:
        with qtbot.waitSignals([w.runner.cancelled, w.runner.finished], timeout=120_000):
            v.annotator.setText("ann")
            v.open_path(str(src))
            qtbot.waitUntil(lambda: hold.held, timeout=120_000)
            w.cancel_button.click()
            hold.release.set()
    finally:
        hold.release.set()
    assert "read so far are queued" in w.banner.label.text()
    assert "nothing was saved" not in w.banner.label.text()
    with AnnotationStore(default_db_path(src)) as s:
        assert len(s) == 500  # the first batch stayed; opening again reads the rest
    _open(qtbot, w, v, src)
    assert len(v.state.store) == 1200
