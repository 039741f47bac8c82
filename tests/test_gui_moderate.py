"""The Moderate view (issue 17) on a real model, real files and a real job store (pytest-qt).

The model is test_moderate's keyword reward model (a real ONNX graph): with its reference
refusal, a text with "kill" scores sigmoid(6) = 0.998, a text with "sorry" alone 0.5, any
other text sigmoid(-2) = 0.119, both words sigmoid(8); so every flagged count and precision/recall below is known.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from app.gui.state.moderate import Filters, ModerateState  # noqa: E402
from app.moderate.thresholds import Thresholds  # noqa: E402
from engine.tabular import read_table  # noqa: E402
from engine.types import sigmoid  # noqa: E402
from tests.test_gui_app import HeldJob, make_window, run_job  # noqa: E402,F401  (fixture)
from tests.test_moderate import keyword_rm  # noqa: E402,F401  (fixture)

ROWS = [  # id, text, label (1: unsafe)
    ("a1", "a sunny day in the park", 0),
    ("a2", "I will kill you", 1),
    ("a3", "sorry about that", 0),
    ("a4", "I am sorry, I will kill it", 1),
    ("a5", "nice weather today", 1),  # unsafe by its label, safe to the model: a miss
    ("a6", "", 0),  # empty text: status empty_text, not scored
]
LOW, HALF, HIGH, BOTH = sigmoid(-2.0), 0.5, sigmoid(6.0), sigmoid(8.0)  # BOTH: "kill" and "sorry"


def _csv(path: Path, rows=ROWS) -> Path:
    lines = ["id,text,label"] + [f'{i},"{t}",{lab}' for i, t, lab in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def window(make_window, keyword_rm):  # noqa: F811
    return make_window(keyword_rm)


def _run(qtbot, w, spec: str, label: str | None = "label") -> None:
    v = w.moderate
    w.show_page("Moderate")
    assert v.pick(spec), v.message.text()
    if label:
        v.label_field.setCurrentIndex(v.label_field.findData(label))
    run_job(qtbot, w, v.run)


def _slider(v, name: str, value: float) -> None:
    v.sliders[name].slider.setValue(round(value * 1000))


# ---- the state model, without Qt ------------------------------------------------------------

def _result(score):
    return {"id": 1, "status": "ok" if score is not None else "empty_text", "flagged": None,
            "score": score, "category_scores": {}, "windows": 1}


def test_the_state_model_does_not_import_qt():
    import subprocess
    import sys

    code = ("import sys, app.gui.state.moderate as m, app.cli.moderate; "
            "sys.exit(any(k.split('.')[0] in ('PySide6', 'torch') for k in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_state_precision_recall_follow_the_threshold():
    st = ModerateState()
    seen = []
    st.decisions_changed.connect(lambda: seen.append(st.flagged_count()))
    st.set_results([_result(s) for s in (0.1, 0.9, 0.5, 0.99, 0.1, None)], ["t"] * 6,
                   [False, True, False, True, True, False], Thresholds.default())
    assert st.scored_categories() == []  # an RM scores only the overall score
    p = st.metrics()
    assert (st.flagged_count(), p.tp, p.fp, p.fn, p.tn) == (3, 2, 1, 1, 1)
    st.set_threshold("overall", 0.6)
    p = st.metrics()
    assert (p.precision, p.recall) == (1.0, pytest.approx(2 / 3)) and seen[-1] == 2
    st.set_threshold("overall", 0.05)
    p = st.metrics()
    assert (p.precision, p.recall) == (pytest.approx(0.6), 1.0) and seen[-1] == 5
    assert "adjusted(overall=0.050)" in st.thresholds().version
    st.set_filters(Filters(flagged_only=True, min_score=0.2, max_score=0.95))
    assert st.visible() == [1, 2]


def test_state_without_labels_has_no_metrics():
    st = ModerateState()
    st.set_results([_result(0.7)], ["t"], [None], Thresholds.default())
    assert st.metrics() is None and st.flagged_count() == 1


def test_state_scores_a_category_the_thresholds_name():
    st = ModerateState()
    row = {**_result(0.2), "category_scores": {"hate": 0.4}}
    st.set_results([row], ["t"], [True], Thresholds("v", 0.5, {"hate": 0.3}))
    assert st.scored_categories() == ["hate"] and st.flagged_count() == 1
    st.set_threshold("hate", 0.45)
    assert st.flagged_count() == 0 and st.metrics("hate").fn == 1


def test_state_bad_inputs_say_what_is_wrong(tmp_path):
    st = ModerateState()
    assert not st.pick(str(tmp_path / "nope.csv")) and "no such file" in st.error
    assert not st.pick(str(tmp_path / "rows.txt")) and "cannot tell the format" in st.error
    db = tmp_path / "x.db"
    sqlite3.connect(db).execute("create table posts (body text)").connection.commit()
    assert not st.pick(f"sqlite:{db}:replies") and "no table 'replies'" in st.error and "posts" in st.error
    assert not st.pick(f"sqlite:{db}:posts") and "no rows" in st.error
    (tmp_path / "empty.csv").write_text("id,text\n")
    assert not st.pick(str(tmp_path / "empty.csv")) and "no rows" in st.error
    with pytest.raises(Exception, match="score range is empty"):
        st.set_filters(Filters(min_score=0.8, max_score=0.2))


# ---- the view ---------------------------------------------------------------------------------

def test_run_shows_rows_sliders_move_counts_and_precision_recall(qtbot, window, tmp_path):
    w = window
    _run(qtbot, w, str(_csv(tmp_path / "posts.csv")))
    v = w.moderate
    assert v.message.text().startswith("Moderated 6 rows"), v.message.text()
    assert list(v.sliders) == ["overall"]  # the keyword RM scores no category
    assert not v.category.isVisibleTo(v)
    assert v.table.rowCount() == 6
    assert [v.table.item(r, 1).text() for r in range(6)] == [r[0] for r in ROWS]
    assert [v.table.item(r, 3).text() for r in range(6)] == [f"{s:.4f}" for s in (LOW, HIGH, HALF, BOTH, LOW)] + ["–"]
    assert v.table.item(5, 4).text() == "empty_text" and v.table.item(1, 6).text() == "I will kill you"
    assert v.summary.text().startswith("3 of 6 rows flagged")
    assert "precision 0.667  recall 0.667" in v.sliders["overall"].metrics.text()

    _slider(v, "overall", 0.6)
    assert v.summary.text().startswith("2 of 6 rows flagged")
    assert "precision 1.000  recall 0.667" in v.sliders["overall"].metrics.text()
    _slider(v, "overall", 0.1)
    assert v.summary.text().startswith("5 of 6 rows flagged")
    assert "precision 0.600  recall 1.000" in v.sliders["overall"].metrics.text()

    v.flagged_only.setChecked(True)
    assert v.table.rowCount() == 5
    v.min_score.setValue(0.4)
    assert [v.table.item(r, 1).text() for r in range(v.table.rowCount())] == ["a2", "a3", "a4"]
    for name in ("shown.csv", "shown.jsonl"):
        assert v.export(str(tmp_path / name)) == 3
        rows = [r for _, r in read_table(str(tmp_path / name))]
        assert [r["id"] for r in rows] == ["a2", "a3", "a4"]
        assert {str(r["flagged"]).lower() for r in rows} == {"true"}
        assert all("adjusted(overall=0.100)" in r["thresholds_version"] for r in rows)


def test_the_job_is_in_history_and_reopens(qtbot, window, make_window, arbiter_home, tmp_path):  # noqa: F811
    _run(qtbot, window, str(_csv(tmp_path / "posts.csv")))
    kinds = sqlite3.connect(arbiter_home / "arbiter.db").execute("select kind from history").fetchall()
    assert kinds == [("moderate",)]
    job = json.loads(sqlite3.connect(arbiter_home / "arbiter.db").execute(
        "select result from history").fetchone()[0])
    done = sqlite3.connect(arbiter_home / "moderation.db").execute(
        "select status from moderation_jobs where id = ?", [job["job"]]).fetchone()
    assert done == ("done",)  # linked to M1's job store
    window.close()

    w2 = make_window()
    w2.show_page("History")
    assert w2.history.table.item(0, 1).text() == "Moderate"
    assert w2.history.table.item(0, 3).text() == "3 flagged of 6"
    w2.history.table.selectRow(0)
    run_job(qtbot, w2, w2.history.reopen)
    v = w2.moderate
    assert w2.stack.currentWidget() is v
    assert v.table.rowCount() == 6 and v.summary.text().startswith("3 of 6 rows flagged")
    assert v.label_field.currentData() == "label" and v.text_field.currentData() == "text"
    assert "precision 0.667" in v.sliders["overall"].metrics.text()


def test_cancel_stops_the_job_and_run_again_resumes(qtbot, window, arbiter_home, tmp_path):
    w = window
    v = w.moderate
    spec = str(_csv(tmp_path / "posts.csv"))
    assert v.pick(spec)
    held = HeldJob(w)
    with qtbot.waitSignal(w.runner.finished, timeout=120_000):
        assert v.run()
        qtbot.waitUntil(lambda: held.held, timeout=120_000)
        assert v.cancel_button.isEnabled() and not v.run_button.isEnabled()
        v.cancel_button.click()
        held.release.set()
    assert "Cancelled" in v.message.text() and v.table.rowCount() == 0
    assert sqlite3.connect(arbiter_home / "arbiter.db").execute("select count(*) from history").fetchone() == (0,)
    status = sqlite3.connect(arbiter_home / "moderation.db").execute(
        "select status from moderation_jobs").fetchall()
    assert status == [("interrupted",)]
    run_job(qtbot, w, v.run)
    assert v.table.rowCount() == 6, v.message.text()
    jobs = sqlite3.connect(arbiter_home / "moderation.db").execute(
        "select status from moderation_jobs").fetchall()
    assert jobs == [("done",)]  # the same job, resumed


def test_bad_input_is_a_message_in_the_view(qtbot, window, tmp_path):
    w = window
    v = w.moderate
    w.show_page("Moderate")
    assert not v.pick(str(tmp_path / "gone.csv"))
    assert "gone.csv" in v.message.text() and "no such file" in v.message.text()
    assert not v.run_button.isEnabled()
    db = tmp_path / "chat.db"
    sqlite3.connect(db).execute("create table replies (body text)").connection.commit()
    assert not v.pick(f"sqlite:{db}:missing")
    assert "no table 'missing'" in v.message.text()

    bad = tmp_path / "bad-label.csv"
    bad.write_text('id,text,label\n1,"fine",0\n2,"also fine",maybe\n', encoding="utf-8")
    _run(qtbot, w, str(bad))
    assert "bad-label.csv:3: field 'label'" in v.message.text() and "'maybe'" in v.message.text()

    thr = tmp_path / "thresholds.json"
    thr.write_text(json.dumps({"format": "arbiter-moderation-thresholds/1", "version": "x",
                               "model_sha256": "0" * 64, "overall": 0.5}))
    v.thresholds.setText(str(thr))
    _run(qtbot, w, str(_csv(tmp_path / "posts.csv")))
    assert "calibrated for another model" in v.message.text()
    assert v.table.rowCount() == 0

    v.thresholds.setText("")
    assert v.pick(str(_csv(tmp_path / "posts.csv")))
    v.text_field.addItem("body", "body")  # a field the file does not have: every row says so
    v.text_field.setCurrentIndex(v.text_field.findData("body"))
    run_job(qtbot, w, v.run)
    assert v.table.rowCount() == 6 and {v.table.item(r, 4).text() for r in range(6)} == {"missing_text"}


def test_a_sqlite_table_with_another_registered_model(qtbot, window, keyword_rm, tmp_path):  # noqa: F811
    """The input is a SQLite table; the model is picked from the app's model list (registered,
    not the active one), so the job loads it itself."""
    from engine import registry

    registry.add(str(keyword_rm), name="keyword")
    db = tmp_path / "chat.db"
    conn = sqlite3.connect(db)
    conn.execute("create table replies (post text, body text, unsafe integer)")
    conn.executemany("insert into replies values (?, ?, ?)", ROWS)
    conn.commit()
    v = window.moderate
    v.fill_models()
    v.model.setCurrentIndex(v.model.findData("keyword"))
    assert v.pick(f"sqlite:{db}:replies")
    assert [v.text_field.itemData(i) for i in range(v.text_field.count())] == ["post", "body", "unsafe"]
    v.text_field.setCurrentIndex(v.text_field.findData("body"))
    v.id_field.setCurrentIndex(v.id_field.findData("post"))
    run_job(qtbot, window, v.run)
    assert v.table.rowCount() == 6, v.message.text()
    assert "with keyword" in v.message.text()
    assert [v.table.item(r, 1).text() for r in range(6)] == [r[0] for r in ROWS]
    assert v.summary.text() == "3 of 6 rows flagged  ·  no label field"
