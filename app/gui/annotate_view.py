"""Annotate view: label pairs by keyboard, blind, into a curation run's DB or a pairs file's own.

Keys (on the view, not in the note field): 1 = left better, 2 = right better, 3 = tie,
4 = both bad, S = skip, U = undo. Every label is in SQLite before the next pair shows
(:class:`trainer.curate.annotations.AnnotationStore`); what is on screen and how the screen
maps to the stored order is :class:`app.gui.state.annotate.AnnotateState`. Opening a pairs
file imports it on the app's worker, so a big file never freezes the window.
"""

from __future__ import annotations

import math
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.gui.context import AppContext
from app.gui.state.annotate import KEYS, AnnotateState, general_guideline
from trainer.curate.annotations import AnnotationStore, open_store

#: key -> the action's name, as the buttons say it
BUTTONS = {"1": "1  Left better", "2": "2  Right better", "3": "3  Tie", "4": "4  Both bad",
           "S": "S  Skip", "U": "U  Undo"}
_QT_KEYS = {Qt.Key.Key_1: "1", Qt.Key.Key_2: "2", Qt.Key.Key_3: "3", Qt.Key.Key_4: "4",
            Qt.Key.Key_S: "S", Qt.Key.Key_U: "U"}
#: the settings key of the annotator's name
NAME_KEY = "annotate/annotator"


def _settings():
    # the window's INI file; imported late (main_window imports this module)
    from app.gui.main_window import settings

    return settings()


def _read_only(placeholder: str = "") -> QPlainTextEdit:
    edit = QPlainTextEdit()
    edit.setReadOnly(True)
    edit.setPlaceholderText(placeholder)
    edit.setFocusPolicy(Qt.FocusPolicy.ClickFocus)  # the keys stay with the view
    return edit


class AnnotateView(QWidget):
    def __init__(self, ctx: AppContext, state: AnnotateState | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.state = state or AnnotateState()
        self._opening = False
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

        # -- what to open, who labels ---------------------------------------------------------
        self.source = QLineEdit()
        self.source.setPlaceholderText("A pairs file (.jsonl, .jsonl.gz, .parquet, ...) or a curation run folder")
        self.source.returnPressed.connect(lambda: self.open_path(self.source.text()))
        browse_file, browse_run = QPushButton("File…"), QPushButton("Run folder…")
        browse_file.clicked.connect(self._browse_file)
        browse_run.clicked.connect(self._browse_run)
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(lambda: self.open_path(self.source.text()))
        self.db_path = QLineEdit()
        self.db_path.setPlaceholderText("beside the file: <file>.annotate.db")
        db_browse = QPushButton("Choose…")
        db_browse.clicked.connect(self._browse_db)
        self.annotator = QLineEdit(str(_settings().value(NAME_KEY, "") or ""))
        self.annotator.setPlaceholderText("your name (stored with each label)")
        self.annotator.editingFinished.connect(self._annotator_changed)
        self.overlap = QSpinBox()
        self.overlap.setRange(1, 20)
        self.overlap.setToolTip("How many annotators each pair needs (set for every pair of the open DB)")
        self.overlap.valueChanged.connect(self._overlap_changed)
        self.conflicts = QCheckBox("Conflicts")
        self.conflicts.setToolTip("Label the pairs whose annotators disagree (one more opinion)")
        self.conflicts.toggled.connect(self._conflicts_toggled)

        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.source, 1)
        for w in (browse_file, browse_run, self.open_button):
            row.addWidget(w)
        form.addRow("Open", row)
        drow = QHBoxLayout()
        drow.addWidget(self.db_path, 1)
        drow.addWidget(db_browse)
        form.addRow("Labels DB", drow)
        arow = QHBoxLayout()
        arow.addWidget(self.annotator, 1)
        arow.addWidget(QLabel("Overlap"))
        arow.addWidget(self.overlap)
        arow.addWidget(self.conflicts)
        form.addRow("Annotator", arow)

        # -- the pair ------------------------------------------------------------------------
        self.conversation = _read_only("The conversation")
        self.left, self.right = _read_only("Left response"), _read_only("Right response")
        panes = QSplitter(Qt.Orientation.Horizontal)
        for title, edit in (("Left", self.left), ("Right", self.right)):
            box = QGroupBox(title)
            QVBoxLayout(box).addWidget(edit)
            panes.addWidget(box)
        self.attributes = QLabel("")
        self.attributes.setWordWrap(True)
        self.pair_guideline = QLabel("")
        self.pair_guideline.setWordWrap(True)
        self.guideline = _read_only()
        self.guideline.setPlainText(general_guideline())
        self.guideline.setVisible(bool(self.guideline.toPlainText()))
        self.guideline.setMaximumHeight(110)
        self.note = QLineEdit()
        self.note.setPlaceholderText("A note with the next label (optional); Enter returns to the keys")
        self.note.returnPressed.connect(self.setFocus)
        self.buttons: dict[str, QPushButton] = {}
        brow = QHBoxLayout()
        for key, text in BUTTONS.items():
            b = QPushButton(text)
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            b.clicked.connect(lambda _c=False, k=key: self.press(k))
            self.buttons[key] = b
            brow.addWidget(b)

        self.progress_label = QLabel("")
        self.agreement_label = QLabel("")
        self.message = QLabel("Open a pairs file or a curation run, and say who you are.")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        pair_box = QSplitter(Qt.Orientation.Vertical)
        pair_box.addWidget(self.conversation)
        pair_box.addWidget(panes)
        pair_box.setStretchFactor(1, 2)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.message)
        lay.addWidget(pair_box, 1)
        lay.addWidget(self.attributes)
        lay.addWidget(self.pair_guideline)
        lay.addWidget(self.guideline)
        lay.addWidget(self.note)
        lay.addLayout(brow)
        lay.addWidget(self.progress_label)
        lay.addWidget(self.agreement_label)

        self.state.changed.connect(self.refresh)
        self.state.annotator = self.annotator.text().strip()
        ctx.runner.failed.connect(self._job_failed)
        ctx.runner.cancelled.connect(self._job_cancelled)
        ctx.runner.finished.connect(self._job_finished)
        self.refresh()

    # ---- opening --------------------------------------------------------------------------
    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Pairs to annotate", "",
                                              "Pairs (*.jsonl *.jsonl.gz *.json *.parquet);;Annotation DB (*.db)"
                                              ";;All files (*)")
        if path:
            self.source.setText(path)
            self.open_path(path)

    def _browse_run(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "A curation run folder (with curation.db)")
        if path:
            self.source.setText(path)
            self.open_path(path)

    def _browse_db(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Where the labels go", "", "SQLite (*.db)")
        if path:
            self.db_path.setText(path)

    def open_path(self, path: str) -> bool:
        """Open a run folder, an annotation DB or a pairs file on the worker; False (with a
        message) when it cannot start."""
        path = path.strip()
        if not path:
            self.show_message("Say what to open: a pairs file or a curation run folder.")
            return False
        if self.ctx.runner.busy:
            self.show_message("Another job is running; wait for it or cancel it.")
            return False
        self.source.setText(path)
        db = self.db_path.text().strip() or None
        overlap = self.overlap.value()

        def job(progress, cancel) -> AnnotationStore:
            def imported(n: int) -> None:
                progress(n, None)
                cancel.raise_if_cancelled()  # between batches: what is queued so far stays queued
            return open_store(path, overlap, db_path=db, progress=imported)

        self._opening = True
        self.open_button.setEnabled(False)
        self.show_message(f"Opening {path}…", error=False)
        return self.ctx.runner.start(f"Opening {Path(path).name} for annotation", job, self._opened,
                                     cancel_message="Cancelled; the pairs read so far are queued: "
                                                    "open the file again to read the rest.")

    def _opened(self, store: AnnotationStore) -> None:
        self.state.open(store)
        p = store.progress()
        if p.get("total"):
            self.overlap.blockSignals(True)  # show the store's overlap without rewriting it
            self.overlap.setValue(max(1, math.ceil(p["needed"] / p["total"])))
            self.overlap.blockSignals(False)
        left = "" if self.state.current is not None else " " + self._nothing_left()
        self.show_message(f"Labels go to {store.path} ({p.get('total', 0)} pairs).{left}", error=False)
        self.setFocus()

    def _job_failed(self, message: str) -> None:
        if self._opening:
            self.show_message(message)

    def _job_cancelled(self) -> None:
        if self._opening:
            self.show_message("Cancelled. The pairs read so far are queued: open the file again to read the rest.")

    def _job_finished(self) -> None:
        self._opening = False
        self.open_button.setEnabled(True)

    # ---- settings ---------------------------------------------------------------------------
    def _annotator_changed(self) -> None:
        name = self.annotator.text().strip()
        s = _settings()
        s.setValue(NAME_KEY, name)
        s.sync()
        self.state.set_annotator(name)
        if self.state.store is not None:  # the "name yourself" hint is stale now: say where labels go
            left = "" if self.state.current is not None else " " + self._nothing_left()
            self.show_message(f"Labels go to {self.state.store.path} as {name or '(no name)'}.{left}",
                              error=False)

    def _overlap_changed(self, value: int) -> None:
        if self.state.store is not None:
            self.state.store.set_overlap(value)
            if self.state.current is None:
                self.state.advance()
            else:
                self.refresh()

    def _conflicts_toggled(self, on: bool) -> None:
        self.state.set_conflicts_mode(on)
        self.setFocus()

    # ---- labelling --------------------------------------------------------------------------
    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = _QT_KEYS.get(Qt.Key(event.key()))
        if key is not None and not (event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier):
            self.press(key)
            event.accept()
            return
        super().keyPressEvent(event)

    def press(self, key: str) -> None:
        """One of the six keys (from the keyboard or a button)."""
        if not self.state.ready:
            self.show_message("Name yourself as the annotator first." if self.state.store is not None
                              else "Open a pairs file or a curation run first.")
            return
        if key in KEYS:
            if self.state.current is None:
                return
            self.state.answer(key, self.note.text())
            self.note.clear()
        elif key == "S":
            self.state.skip()
        elif key == "U" and not self.state.undo():
            self.show_message("Nothing to undo.", error=False)

    # ---- showing -----------------------------------------------------------------------------
    def show_message(self, text: str, *, error: bool = True) -> None:
        self.message.setText(text)
        self.message.setStyleSheet("color: #b3261e" if error else "")

    def refresh(self) -> None:
        st = self.state
        shown = st.current
        for k in KEYS:
            self.buttons[k].setEnabled(shown is not None)
        self.buttons["S"].setEnabled(shown is not None)
        self.buttons["U"].setEnabled(st.ready)
        if shown is None:
            for edit in (self.conversation, self.left, self.right):
                edit.clear()
            self.attributes.setText("")
            self.pair_guideline.setText("")
            if st.store is not None:
                self.show_message(self._nothing_left(), error=False)
        else:
            self.conversation.setPlainText("\n\n".join(f"{m.role.capitalize()}:\n{m.content}"
                                                       for m in shown.item.pair.conversation))
            self.left.setPlainText(shown.left)
            self.right.setPlainText(shown.right)
            self.attributes.setText("   ·   ".join(f"{k}: {v}" for k, v in st.attribute_lines()))
            g = st.pair_guideline()
            self.pair_guideline.setText(f"For this pair: {g}" if g else "")
        self._refresh_stats()

    def _nothing_left(self) -> str:
        if not self.state.annotator:
            return "Name yourself as the annotator to start."
        if self.state.conflicts_mode:
            return f"No conflicts left for {self.state.annotator}."
        n = self.state.progress().get("conflicts", 0)
        more = f" {n} pair(s) are in conflict: turn on Conflicts to label them." if n else ""
        return f"Nothing left for {self.state.annotator} in this queue.{more}"

    def _refresh_stats(self) -> None:
        p = self.state.progress()
        if not p:
            self.progress_label.setText("")
            self.agreement_label.setText("")
            return
        per = ", ".join(f"{who} {n}" for who, n in p["per_annotator"].items()) or "none yet"
        self.progress_label.setText(
            f"Labelled {p['labelled']} / {p['total']} pairs (complete {p['complete']}; "
            f"{p['labels']} of {p['needed']} labels)   ·   per annotator: {per}   ·   conflicts {p['conflicts']}")
        a = self.state.agreement()
        if not a.get("compared"):
            self.agreement_label.setText("Agreement: no pair has two labels yet.")
            return
        alpha = f"Krippendorff's α {a['alpha']:.3f}" if a.get("alpha") is not None and not math.isnan(a["alpha"]) \
            else f"Krippendorff's α undefined ({a.get('alpha_note') or 'no variation'})"
        self.agreement_label.setText(f"Agreement: raw {a['raw']:.3f} over {a['compared']} annotator pairs   ·   "
                                     f"{alpha}")

    # ---- shutdown -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Close the store (every label is already committed: this only frees the file)."""
        self.state.close()
