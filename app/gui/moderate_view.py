"""Moderate view: screen a file or a SQLite table with a model, tune thresholds, filter, export.

The scoring is M1's resumable job (:func:`app.moderate.job.run`) on the app's worker, so the
window never waits; a Cancel stops it after the current batch, and running the same request
again resumes where it stopped. What the view shows lives in the Qt-free
:class:`app.gui.state.moderate.ModerateState`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

import engine
from app.gui.context import AppContext
from app.gui.state.moderate import (
    OVERALL,
    Fields,
    Filters,
    ModerateState,
    load_results,
    output_path,
    side_rows,
)
from app.gui.widgets import muted, read_only_table, score_font
from app.gui.worker import describe_error
from engine import registry
from engine.paths import data_dir

#: slider steps over the score range 0..1 (a step is 0.001)
STEPS = 1000
NONE = "(none)"
ACTIVE = "__active__"


class ThresholdSlider(QWidget):
    """One category's threshold, with its flagged count and (labelled) precision/recall."""

    def __init__(self, name: str, value: float, on_change) -> None:
        super().__init__()
        self.name = name
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, STEPS)
        self.slider.setValue(round(value * STEPS))
        self.value = QLabel(f"{value:.3f}")
        self.value.setFont(score_font())
        self.metrics = muted(QLabel(""))
        self.slider.valueChanged.connect(lambda v: on_change(name, v / STEPS))
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(QLabel(name), 0)
        lay.addWidget(self.slider, 1)
        lay.addWidget(self.value)
        lay.addWidget(self.metrics)


class ModerateView(QWidget):
    def __init__(self, ctx: AppContext, state: ModerateState | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.state = state or ModerateState()
        self.sliders: dict[str, ThresholdSlider] = {}
        self._running = False

        self.input = QLineEdit()
        self.input.setPlaceholderText("A .jsonl, .jsonl.gz, .csv or .parquet file, or sqlite:PATH.db:TABLE")
        self.input.editingFinished.connect(lambda: self.pick(self.input.text()))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_input)
        self.text_field, self.context_field = QComboBox(), QComboBox()
        self.id_field, self.label_field = QComboBox(), QComboBox()
        self.model = QComboBox()
        self.model.setToolTip("The model that scores; the active model is the one in the side bar")
        self.thresholds = QLineEdit()
        self.thresholds.setPlaceholderText("default (0.5: the model prefers the refusal)")
        thr_browse = QPushButton("Browse…")
        thr_browse.clicked.connect(self._browse_thresholds)
        self.run_button, self.cancel_button = QPushButton("Run"), QPushButton("Cancel")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(ctx.runner.cancel)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.message = QLabel("Pick a file or a SQLite table, its fields and a model, then Run.")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.input, 1)
        row.addWidget(browse)
        form.addRow("Input", row)
        fields = QGridLayout()
        for col, (label, box) in enumerate((("Text", self.text_field), ("Context", self.context_field),
                                            ("Id", self.id_field), ("Label", self.label_field))):
            fields.addWidget(muted(QLabel(label)), 0, col)
            fields.addWidget(box, 1, col)
        form.addRow("Fields", fields)
        form.addRow("Model", self.model)
        trow = QHBoxLayout()
        trow.addWidget(self.thresholds, 1)
        trow.addWidget(thr_browse)
        form.addRow("Thresholds", trow)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.progress, 1)

        self.slider_box = QVBoxLayout()
        self.summary = QLabel("")
        self.summary.setStyleSheet("font-weight: 600")
        self.flagged_only = QCheckBox("Flagged only")
        self.min_score, self.max_score = QDoubleSpinBox(), QDoubleSpinBox()
        for box, v in ((self.min_score, 0.0), (self.max_score, 1.0)):
            box.setRange(0.0, 1.0)
            box.setDecimals(3)
            box.setSingleStep(0.05)
            box.setValue(v)
            box.valueChanged.connect(lambda _v: self._filters_changed())
        self.category = QComboBox()
        self.flagged_only.toggled.connect(lambda _c: self._filters_changed())
        self.category.currentIndexChanged.connect(lambda _i: self._filters_changed())
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(self._export_dialog)
        filters = QHBoxLayout()
        filters.addWidget(self.flagged_only)
        filters.addWidget(muted(QLabel("Score from")))
        filters.addWidget(self.min_score)
        filters.addWidget(muted(QLabel("to")))
        filters.addWidget(self.max_score)
        filters.addWidget(self.category)
        filters.addStretch()
        filters.addWidget(self.export_button)
        self.table = read_only_table(["Row", "Id", "Flagged", "Score", "Status", "Windows", "Text"])

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.message)
        lay.addLayout(self.slider_box)
        lay.addWidget(self.summary)
        lay.addLayout(filters)
        lay.addWidget(self.table, 1)

        self.state.columns_changed.connect(self._show_columns)
        self.state.results_changed.connect(self._show_sliders)
        self.state.decisions_changed.connect(self._show_decisions)
        ctx.runner.started.connect(lambda _l: self.run_button.setEnabled(False))
        ctx.runner.finished.connect(self._job_finished)
        ctx.runner.progressed.connect(self._progress)
        ctx.runner.failed.connect(self._job_failed)
        ctx.runner.cancelled.connect(self._job_cancelled)
        ctx.session.changed.connect(lambda _i: self.fill_models())
        self.fill_models()
        self._show_columns()
        self._show_sliders()

    # ---- input ------------------------------------------------------------------------------
    def fill_models(self) -> None:
        current = self.model.currentData()
        self.model.clear()
        active = self.ctx.session.spec
        self.model.addItem(f"Active model ({active})" if active else "Active model (none open)", ACTIVE)
        for e in registry.list_models():
            self.model.addItem(e.name + (" (built-in)" if e.builtin else ""), e.name)
        self.model.setCurrentIndex(max(0, self.model.findData(current)))

    def pick(self, spec: str) -> bool:
        """Read the input's fields; a bad input shows its reason here and nothing else changes."""
        if self.input.text() != spec:
            self.input.setText(spec)
        if not spec.strip():
            return False
        ok = self.state.pick(spec)
        self.show_message(self.state.error if not ok else f"{len(self.state.columns)} fields in {spec}",
                          error=not ok)
        return ok

    def _browse_input(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Rows to moderate", "", "Tables (*.jsonl *.jsonl.gz *.csv *.parquet *.db *.sqlite *.sqlite3)")
        if not path:
            return
        if path.endswith((".db", ".sqlite", ".sqlite3")):
            from engine.tabular import open_sqlite_readonly, sqlite_tables

            try:
                conn = open_sqlite_readonly(path)
                try:
                    tables = sqlite_tables(conn)
                finally:
                    conn.close()
            except engine.ArbiterError as e:
                self.show_message(str(e))
                return
            if not tables:
                self.show_message(f"sqlite:{path}: the database has no tables")
                return
            table, ok = QInputDialog.getItem(self, "SQLite table", "Table", tables, 0, False)
            if not ok:
                return
            path = f"sqlite:{path}:{table}"
        self.pick(path)

    def _browse_thresholds(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Thresholds", "", "Thresholds (*.json)")
        if path:
            self.thresholds.setText(path)

    def _show_columns(self) -> None:
        cols = self.state.columns
        for box, extra, preferred in ((self.text_field, [], ("text", "response", "content")),
                                      (self.context_field, [NONE], ("context", "prompt")),
                                      (self.id_field, ["(row number)"], ("id",)),
                                      (self.label_field, [NONE], ("label",))):
            box.clear()
            for name in extra:
                box.addItem(name, None)
            for c in cols:
                box.addItem(c, c)
            box.setCurrentIndex(next((box.findData(p) for p in preferred if box.findData(p) >= 0), 0))
            box.setEnabled(bool(cols))
        self.run_button.setEnabled(bool(cols) and not self.ctx.runner.busy)

    def fields(self) -> Fields:
        return Fields(self.text_field.currentData(), self.context_field.currentData(),
                      self.id_field.currentData(), self.label_field.currentData())

    def show_message(self, text: str, *, error: bool = True) -> None:
        self.message.setText(text)
        self.message.setStyleSheet("color: #b3261e" if error else "")

    # ---- the job ----------------------------------------------------------------------------
    def run(self) -> bool:
        """Start the moderation job on the worker; False (with a message) when it cannot start."""
        if self.ctx.runner.busy:
            self.show_message("Another job is running; wait for it or cancel it.")
            return False
        stale = not self.state.columns or self.state.spec != self.input.text().strip()
        if stale and not self.pick(self.input.text()):
            return False
        fields, spec = self.fields(), self.state.spec
        model = self.model.currentData()
        scorer = self.ctx.session.scorer
        if model == ACTIVE and scorer is None:
            self.show_message("No model is open: choose one in the Model list or in Models.")
            return False
        thr_path = self.thresholds.text().strip() or None
        out = output_path(data_dir() / "moderation", spec, fields,
                          self.ctx.session.spec if model == ACTIVE else model, thr_path)
        self._running = True
        self.cancel_button.setEnabled(True)
        self.show_message(f"Moderating {spec}…", error=False)
        session = self.ctx.session
        job = _job(spec, fields, out, model, scorer, thr_path,
                   {"device": session.device, "threads": session.threads or None})
        return self.ctx.runner.start(f"Moderating {Path(spec).name}", job, self._done,
                                     cancel_message="Cancelled; the rows scored so far are kept: "
                                                    "Run again to resume.")

    def _done(self, r: dict[str, Any]) -> None:
        self.state.set_results(r["results"], r["texts"], r["labels"], r["thresholds"])
        record = r["record"]
        self.ctx.history.add_moderation(r["info"], record)
        self.show_message(f"Moderated {record['rows']} rows with {r['info'].name}: {record['flagged']} "
                          f"flagged at thresholds {record['thresholds_version']}; job {record['job']} -> "
                          f"{record['output']}", error=False)

    def _progress(self, done: int, total: int) -> None:
        if not self._running:
            return
        self.progress.show()
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            self.progress.setFormat(f"{done} / {total} rows")
        else:
            self.progress.setRange(0, 0)

    def _job_failed(self, message: str) -> None:
        if self._running:
            self.show_message(message)

    def _job_cancelled(self) -> None:
        if self._running:
            self.show_message("Cancelled. The rows scored so far are kept: Run again to resume.")

    def _job_finished(self) -> None:
        self._running = False
        self.cancel_button.setEnabled(False)
        self.progress.hide()
        self.run_button.setEnabled(bool(self.state.columns))

    # ---- reopen from History ----------------------------------------------------------------
    def reopen(self, job: dict[str, Any]) -> bool:
        """Show a finished job again: its input, fields, thresholds and rows (from its output)."""
        if self.ctx.runner.busy:
            self.show_message("Another job is running; reopen when it ends.")
            return False
        spec = str(job.get("input", ""))
        self.input.setText(spec)
        self.state.pick(spec)  # the input may be gone: its rows still show, without text
        for box, name in ((self.text_field, job.get("text_field")), (self.context_field, job.get("context_field")),
                          (self.id_field, job.get("id_field")), (self.label_field, job.get("label_field"))):
            if box.findData(name) < 0:
                box.addItem(str(name), name)
            box.setCurrentIndex(box.findData(name))
        self.thresholds.setText(job.get("thresholds") or "")
        fields = self.fields()
        base = _thresholds_of(job)

        def work(progress, cancel) -> dict[str, Any]:
            results = load_results(job["output"])
            try:
                texts, labels = side_rows(spec, fields)
                note = ""
            except engine.ArbiterError as e:
                texts, labels, note = [], [], f" (the input cannot be read: {e}; rows show without text)"
            return {"results": results, "texts": texts, "labels": labels, "note": note}

        def done(r: dict[str, Any]) -> None:
            self.state.set_results(r["results"], r["texts"], r["labels"], base)
            self.show_message(f"Reopened job {job.get('job')}: {job.get('rows')} rows, {job.get('flagged')} "
                              f"flagged{r['note']}", error=bool(r["note"]))

        self._running = True
        return self.ctx.runner.start("Reopening a moderation job", work, done)

    # ---- sliders, results, filters ----------------------------------------------------------
    def _show_sliders(self) -> None:
        while self.slider_box.count():
            w = self.slider_box.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self.sliders = {}
        if not self.state.results:
            self.summary.setText("")
            return
        for name in [OVERALL, *self.state.scored_categories()]:
            s = ThresholdSlider(name, self.state.live[name], self.state.set_threshold)
            self.sliders[name] = s
            self.slider_box.addWidget(s)
        cats = self.state.scored_categories()
        self.category.blockSignals(True)
        self.category.clear()
        self.category.addItem("All categories", None)
        for c in cats:
            self.category.addItem(c, c)
        self.category.blockSignals(False)
        self.category.setVisible(bool(cats))  # an RM scores no category: nothing to filter by

    def _show_decisions(self) -> None:
        st = self.state
        for name, s in self.sliders.items():
            s.value.setText(f"{st.live[name]:.3f}")
            p = st.metrics(name)
            s.metrics.setText("" if p is None else
                              f"precision {p.precision:.3f}  recall {p.recall:.3f}  (tp {p.tp}, fp {p.fp}, fn {p.fn})")
        if st.results:
            labelled = sum(v is not None for v in st.labels)
            self.summary.setText(f"{st.flagged_count()} of {len(st.results)} rows flagged"
                                 + (f"  ·  {labelled} labelled" if labelled else "  ·  no label field"))
        self._fill_table()

    def _fill_table(self) -> None:
        st = self.state
        rows = st.visible()
        thr = st.thresholds()
        self.table.setRowCount(len(rows))
        mono = score_font()
        for n, i in enumerate(rows):
            r = st.results[i]
            flagged, _cats = st.decision(r, thr)
            score = r.get("score")
            cells = [str(i + 1), str(r.get("id")), "–" if flagged is None else ("yes" if flagged else "no"),
                     "–" if score is None else f"{score:.4f}", str(r.get("status", "")),
                     str(r.get("windows", "")), st.texts[i] if i < len(st.texts) else ""]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == 3:
                    item.setFont(mono)
                self.table.setItem(n, col, item)

    def _filters_changed(self) -> None:
        try:
            self.state.set_filters(Filters(self.flagged_only.isChecked(), self.min_score.value(),
                                           self.max_score.value(), self.category.currentData()))
        except engine.InputError as e:
            self.show_message(str(e))

    def export(self, path: str) -> int:
        n = self.state.export(path)
        self.show_message(f"Exported {n} rows to {path}.", error=False)
        return n

    def _export_dialog(self) -> None:
        if not self.state.results:
            self.show_message("Nothing to export yet: run a job first.")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export results", "moderation.csv",
                                              "CSV (*.csv);;JSONL (*.jsonl)")
        if path:
            try:
                self.export(path)
            except (engine.ArbiterError, OSError) as e:
                self.show_message(describe_error(e))


def _thresholds_of(job: dict[str, Any]):
    from app.moderate.categories import category_map
    from app.moderate.thresholds import Thresholds

    return Thresholds(str(job.get("thresholds_version") or "default-0.5"),
                      float(job.get("thresholds_overall", 0.5)),
                      category_map(job.get("thresholds_categories") or {}), job.get("model_sha256"))


def _job(spec: str, fields: Fields, out: Path, model: str, scorer, thr_path: str | None,
         load_options: dict[str, Any]):
    """The worker's function: load the model if another than the active one, run M1's job,
    read back the output and the side columns (text snippets, labels)."""

    def work(progress, cancel) -> dict[str, Any]:
        from app.moderate import thresholds
        from app.moderate.job import Options, run
        from app.moderate.scoring import model_sha256
        from app.moderate.store import ModerationStore

        own = None if model == ACTIVE else engine.load(model, **load_options)  # the app's device, threads
        rm = own or scorer
        try:
            sha = model_sha256(rm.info)
            thr = thresholds.load(thr_path, sha) if thr_path else thresholds.Thresholds.default()
            texts, labels = side_rows(spec, fields)  # a bad label fails before any scoring

            def report(done: int, total: int | None) -> None:
                progress(done, total)
                cancel.raise_if_cancelled()  # between batches: what is committed stays, and resumes

            out.parent.mkdir(parents=True, exist_ok=True)
            store = ModerationStore()
            try:
                summary = run(rm, Options(spec, str(out), fields.text, fields.context, fields.id), thr,
                              model_sha256=sha, store=store, progress=report)
            finally:
                store.close()
            info = rm.info
        finally:
            if own is not None:
                own.close()
        record = {"job": summary.job, "input": spec, "output": str(out), "text_field": fields.text,
                  "context_field": fields.context, "id_field": fields.id, "label_field": fields.label,
                  "thresholds": thr_path, "thresholds_version": thr.version, "thresholds_overall": thr.overall,
                  "thresholds_categories": {k: v for k, v in thr.categories.items() if v is not None},
                  "model_sha256": sha, "rows": summary.rows, "flagged": summary.flagged,
                  "statuses": summary.statuses}
        return {"results": load_results(out), "texts": texts, "labels": labels, "thresholds": thr,
                "info": info, "record": record}

    return work
