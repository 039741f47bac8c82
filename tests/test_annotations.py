"""The annotation store (trainer/curate/annotations.py) on real SQLite files, no Qt."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from engine.errors import InputError
from trainer.curate.annotations import (
    AnnotationStore,
    LabelRow,
    default_db_path,
    majority,
    open_store,
)
from trainer.data.record import pair, read_pairs, write_pairs


def _pairs(n: int) -> list:
    return [pair(f"question {i}", f"good {i}", f"bad {i}", id=f"p{i}", source=f"src{i}") for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = AnnotationStore(tmp_path / "curation.db")
    yield s
    s.close()


def test_the_module_imports_no_qt_torch_or_llama():
    code = ("import sys, trainer.curate.annotations; "
            "sys.exit(any(k.split('.')[0] in ('PySide6', 'torch', 'llama_cpp', 'usearch') for k in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_queue_follows_priority_then_insertion_order(store):
    ps = _pairs(4)
    # priorities: p2 first (0), then p0 and p3 tie at 1 (insertion order), then p1
    store.enqueue([(ps[0], None, (1, "b")), (ps[1], None, (2,)), (ps[2], None, (0,)), (ps[3], None, (1, "b"))], 1)
    order = []
    while (item := store.next_for("ann")) is not None:
        order.append(item.pair_id)
        store.label(item.pair_id, "ann", "1")
    assert order == ["p2", "p0", "p3", "p1"]


def test_mixed_priority_types_still_compare(store):
    ps = _pairs(3)
    store.enqueue([(ps[0], None, ("x",)), (ps[1], None, (True, 2)), (ps[2], None, (0, 1.5))], 1)
    assert store.next_for("ann").pair_id == "p2"  # 0 < True (1.0) < "x"


def test_re_enqueue_keeps_the_first_row_and_its_labels(store):
    ps = _pairs(2)
    assert store.enqueue([(ps[0], None, (0,))], 1) == 1
    store.label("p0", "ann", "2")
    assert store.enqueue([(ps[0], None, (5,)), (ps[1], None, (1,))], 1) == 1
    assert store.human_labels() == [LabelRow("p0", "ann", "2")]
    assert store.get("p0").priority == (0,)


def test_overlap_asks_each_pair_of_that_many_annotators(store):
    store.enqueue([(p, None, (i,)) for i, p in enumerate(_pairs(2))], 2)
    store.label("p0", "ann", "1")
    assert store.next_for("ann").pair_id == "p1"  # ann has done p0
    assert store.next_for("bob").pair_id == "p0"  # p0 still needs a second annotator
    store.label("p0", "bob", "1")
    assert store.next_for("cy").pair_id == "p1"  # p0 is complete: not offered to a third
    store.set_overlap(3)
    assert store.next_for("cy").pair_id == "p0"


def test_label_is_committed_before_it_returns(store, tmp_path):
    store.enqueue([(_pairs(1)[0], None, (0,))], 1)
    rid = store.label("p0", "ann", "tie", note="both fine", seconds=3.25, screen_swapped=True)
    # a second, independent connection sees it at once: nothing waits for a close
    row = sqlite3.connect(tmp_path / "curation.db").execute(
        "select id, pair_id, annotator, label, note, seconds, screen_swapped, undone from labels").fetchone()
    assert row == (rid, "p0", "ann", "tie", "both fine", 3.25, 1, 0)


def test_a_label_survives_a_reopen_and_the_queue_continues(tmp_path):
    db = tmp_path / "curation.db"
    with AnnotationStore(db) as s:
        s.enqueue([(p, None, (i,)) for i, p in enumerate(_pairs(3))], 1)
        s.label("p0", "ann", "1")
    with AnnotationStore(db) as s:
        assert s.human_labels() == [LabelRow("p0", "ann", "1")]
        assert s.next_for("ann").pair_id == "p1"


def test_undo_returns_the_last_pair_and_marks_the_row_undone(store):
    store.enqueue([(p, None, (i,)) for i, p in enumerate(_pairs(3))], 1)
    store.label("p0", "ann", "1")
    store.label("p1", "ann", "2")
    store.label("p0", "bob", "1")
    item = store.undo("ann")
    assert item.pair_id == "p1"
    assert store.next_for("ann").pair_id == "p1"  # it comes back to them
    assert store.undo("ann").pair_id == "p0"
    assert store.undo("ann") is None
    assert store.human_labels() == [LabelRow("p0", "bob", "1")]
    rows = store.label_rows(include_undone=True)
    assert [(r["annotator"], r["undone"]) for r in rows] == [("ann", 1), ("ann", 1), ("bob", 0)]


def test_relabelling_replaces_the_annotators_earlier_label(store):
    store.enqueue([(_pairs(1)[0], None, (0,))], 1)
    store.label("p0", "ann", "1")
    store.label("p0", "ann", "2")
    assert store.human_labels() == [LabelRow("p0", "ann", "2")]


def test_bad_labels_and_names_are_input_errors(store):
    store.enqueue([(_pairs(1)[0], None, (0,))], 1)
    with pytest.raises(InputError, match="field 'label'"):
        store.label("p0", "ann", "left")
    with pytest.raises(InputError, match="field 'annotator'"):
        store.label("p0", "  ", "1")
    with pytest.raises(InputError, match="no queued pair"):
        store.label("nope", "ann", "1")
    with pytest.raises(InputError, match="field 'seconds'"):
        store.label("p0", "ann", "1", seconds=-1.0)
    with pytest.raises(InputError, match="field 'overlap'"):
        store.enqueue([], 0)
    assert store.human_labels() == []


def test_majority_is_strict():
    assert majority(["1", "1", "2"]) == "1"
    assert majority(["1", "2"]) is None
    assert majority(["1", "1", "2", "2"]) is None
    assert majority([]) is None


def test_conflicts_queue(store):
    store.enqueue([(p, None, (i,)) for i, p in enumerate(_pairs(3))], 2)
    for pid, a, b in (("p0", "1", "2"), ("p1", "1", "1"), ("p2", "tie", "both_bad")):
        store.label(pid, "ann", a)
        store.label(pid, "bob", b)
    assert store.conflicts() == ["p0", "p2"]
    assert store.next_for("cy") is None  # every pair has its two labels
    assert store.next_for("ann", conflicts=True) is None  # ann labelled them all already
    item = store.next_for("cy", conflicts=True)
    assert item.pair_id == "p0" and item.conflict
    store.label("p0", "cy", "1")  # 2 of 3: resolved
    assert store.conflicts() == ["p2"]
    assert store.next_for("cy", conflicts=True).pair_id == "p2"
    assert store.progress()["conflicts"] == 1


def test_progress_counts(store):
    store.enqueue([(p, None, (i,)) for i, p in enumerate(_pairs(3))], 2)
    store.label("p0", "ann", "1")
    store.label("p0", "bob", "1")
    store.label("p1", "ann", "2")
    assert store.progress() == {"total": 3, "labelled": 2, "complete": 1, "labels": 3, "needed": 6,
                                "conflicts": 0, "per_annotator": {"ann": 2, "bob": 1}}


def test_gold_pairs_orient_by_the_majority_and_keep_provenance(store):
    ps = _pairs(5)
    attrs = {"task_category": "math", "objectivity": "objective", "controversiality": "low",
             "desired_attributes": ["correct"], "guideline": "check the arithmetic"}
    store.enqueue([(p, attrs if i == 0 else None, (i,)) for i, p in enumerate(ps)], 2)
    labels = {"p0": ("1", "1"), "p1": ("2", "2"), "p2": ("tie", "tie"), "p3": ("both_bad", "both_bad"),
              "p4": ("1", "2")}
    for pid, (a, b) in labels.items():
        store.label(pid, "ann", a)
        store.label(pid, "bob", b)
    gold = {p.id: p for p in store.gold_pairs()}
    assert sorted(gold) == ["p0", "p1", "p2"]  # both_bad and the conflict are left out
    assert (gold["p0"].chosen, gold["p0"].rejected) == ("good 0", "bad 0")
    assert (gold["p1"].chosen, gold["p1"].rejected) == ("bad 1", "good 1")  # the humans flipped it
    assert gold["p2"].tie and not gold["p0"].tie
    for g in gold.values():
        assert g.label_origin == "human" and g.labellers == ("ann", "bob")
    cur = gold["p1"].attributes["curation"]
    assert cur["source"] == "src1" and cur["majority"] == "2" and not cur["agrees_with_original"]
    assert cur["human_labels"] == [{"annotator": "ann", "label": "2"}, {"annotator": "bob", "label": "2"}]
    assert gold["p0"].attributes["curation"]["preference_attributes"] == attrs


def test_gold_pairs_wait_for_the_overlap_unless_told(store):
    store.enqueue([(_pairs(1)[0], None, (0,))], 2)
    store.label("p0", "ann", "2")
    assert list(store.gold_pairs()) == []
    assert [p.chosen for p in store.gold_pairs(min_labels=1)] == ["bad 0"]


def test_gold_pairs_round_trip_through_the_trainers_format(store, tmp_path):
    store.enqueue([(p, None, (i,)) for i, p in enumerate(_pairs(2))], 1)
    store.label("p0", "ann", "1")
    store.label("p1", "ann", "2")
    out = tmp_path / "gold.jsonl"
    assert write_pairs(store.gold_pairs(), out) == 2
    back = list(read_pairs(out))
    assert [p.to_dict() for p in back] == [p.to_dict() for p in store.gold_pairs()]


def test_from_pairs_imports_beside_the_file_and_reopens(tmp_path):
    src = tmp_path / "pairs.jsonl"
    write_pairs(_pairs(3), src)
    seen = []
    with AnnotationStore.from_pairs(src, progress=seen.append) as s:
        assert s.path == default_db_path(src) == tmp_path / "pairs.jsonl.annotate.db"
        assert len(s) == 3 and seen[-1] == 3
        assert s.next_for("ann").pair_id == "p0"  # file order
        s.label("p0", "ann", "1")
        assert json.loads(s.meta("imported"))["pairs"] == 3
    with open_store(src) as s:  # opening the file again continues
        assert len(s) == 3 and s.next_for("ann").pair_id == "p1"
    with open_store(default_db_path(src)) as s:  # the DB itself opens too
        assert s.human_labels() == [LabelRow("p0", "ann", "1")]


def test_from_pairs_names_the_bad_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    good = json.dumps(_pairs(1)[0].to_dict())
    src.write_text(good + "\n" + '{"conversation": [], "chosen": 3, "rejected": "x"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: .*chosen"):
        AnnotationStore.from_pairs(src, tmp_path / "a.db")


def test_from_pairs_refuses_two_pairs_under_one_id(tmp_path):
    src = tmp_path / "dup.jsonl"
    a, b = pair("q", "x", "y", id="same"), pair("q2", "x", "y", id="same")
    write_pairs([a, b], src)
    with pytest.raises(InputError, match="'same'.*unique"):
        AnnotationStore.from_pairs(src, tmp_path / "a.db")


def test_open_store_on_a_run_folder_and_on_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(InputError, match="no curation.db"):
        open_store(run)
    AnnotationStore(run / "curation.db").close()
    with open_store(run) as s:
        assert s.path == run / "curation.db"
    with pytest.raises(InputError, match="no such file"):
        open_store(tmp_path / "missing.jsonl")


def test_a_file_that_is_no_database_is_a_clear_error(tmp_path):
    from engine.store import StoreError

    bad = tmp_path / "x.db"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="x.db: cannot be read as an annotation database") as e:
        AnnotationStore(bad)
    assert "hash cache" not in str(e.value)  # not engine.store's message about arbiter.db


def test_shares_a_run_db_with_other_tables(tmp_path):
    db = tmp_path / "curation.db"
    other = sqlite3.connect(db)
    other.execute("create table pairs (id text primary key, body text)")
    other.execute("insert into pairs values ('x', 'y')")
    other.commit()
    with AnnotationStore(db) as s:
        s.enqueue([(_pairs(1)[0], None, (0,))], 1)
        s.label("p0", "ann", "1")
    assert other.execute("select count(*) from pairs").fetchone() == (1,)
    assert other.execute("select count(*) from labels").fetchone() == (1,)


def test_another_connections_enqueue_is_seen(tmp_path):
    db = tmp_path / "curation.db"
    with AnnotationStore(db) as viewer, AnnotationStore(db) as loop:
        loop.enqueue([(_pairs(2)[1], None, (1,))], 1)
        assert viewer.next_for("ann").pair_id == "p1"
        loop.enqueue([(_pairs(1)[0], None, (0,))], 1)  # a later round queues a higher priority
        assert viewer.next_for("ann").pair_id == "p0"



def test_from_pairs_puts_objective_low_controversy_first(tmp_path):
    def attrs(obj: str, con: str) -> dict:
        return {"task_category": "chat", "objectivity": obj, "controversiality": con,
                "desired_attributes": [], "guideline": ""}

    ps = [pair(f"q{i}", "a", "b", id=f"p{i}", attributes=a) for i, a in enumerate(
        [{}, attrs("subjective", "low"), attrs("objective", "high"), attrs("objective", "low"),
         {"curation": {"preference_attributes": attrs("objective", "low")}}])]
    src = tmp_path / "pairs.jsonl"
    write_pairs(ps, src)
    with AnnotationStore.from_pairs(src) as s:
        order = []
        while (item := s.next_for("ann")) is not None:
            order.append(item.pair_id)
            s.label(item.pair_id, "ann", "1")
        assert order == ["p3", "p4", "p2", "p1", "p0"]  # no attributes: last
        assert s.get("p4").attributes.objectivity == "objective"


def test_needs_follows_next_for(store):
    store.enqueue([(_pairs(1)[0], None, (0,))], 1)
    assert store.needs("p0", "ann") and not store.needs("nope", "ann")
    store.label("p0", "bob", "1")
    assert not store.needs("p0", "ann")  # complete at overlap 1
    assert not store.needs("p0", "ann", conflicts=True)  # one label: no conflict
