"""Best-of-N view: a conversation, N candidates, and the candidates ranked best first."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

import engine
from app.gui.context import AppContext
from app.gui.state.best_of_n import BestOfNState, RankResult, rank_in_chunks
from app.gui.widgets import (
    WIN_SOFT,
    ConversationEditor,
    ScoreChart,
    model_line,
    muted,
    read_only_table,
    score_font,
    text_edit,
)


def preview(text: str, n: int = 70) -> str:
    one = " ".join(text.split())
    return one[:n] + ("…" if len(one) > n else "") if one else "(empty)"


class BestOfNView(QWidget):
    def __init__(self, ctx: AppContext, state: BestOfNState | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.state = state or BestOfNState()
        self.conversation = ConversationEditor(self.state.conversation)

        # candidates: a list to pick from and one editor for the picked candidate
        self.list = QListWidget()
        self.list.currentRowChanged.connect(self._pick)
        self.editor = text_edit("The selected candidate's text", 4)
        self.editor.textChanged.connect(self._edited)
        add, remove, imp = QPushButton("Add"), QPushButton("Remove"), QPushButton("Import…")
        imp.setToolTip("Append candidates from a JSON list, JSONL, or text separated by '---' lines")
        add.clicked.connect(lambda: (self.state.add(), self.list.setCurrentRow(len(self.state.candidates) - 1)))
        remove.clicked.connect(self._remove)
        imp.clicked.connect(self._import_dialog)
        row = QHBoxLayout()
        for b in (add, remove, imp):
            row.addWidget(b)
        row.addStretch()
        cands = QWidget()
        cl = QVBoxLayout(cands)
        cl.setContentsMargins(0, 0, 0, 0)
        self.count = QLabel()
        self.count.setStyleSheet("font-weight: 600")
        cl.addWidget(self.count)
        cl.addWidget(self.list, 2)
        cl.addWidget(self.editor, 1)
        cl.addLayout(row)

        # result: table of every candidate, a chart of the top ones
        self.table = read_only_table(["Rank", "#", "Score", "P(best better)", "Response"])
        self.chart = ScoreChart()
        chart_scroll = QScrollArea()
        chart_scroll.setWidgetResizable(True)
        chart_scroll.setWidget(self.chart)
        self.summary = QLabel("Add candidates, then Score to rank them.")
        self.summary.setStyleSheet("font-weight: 600")
        self.summary.setWordWrap(True)  # a long list of windowed candidates wraps, never widens the view
        self.model_line = muted(QLabel(""))
        self.score_button = QPushButton("Score")
        self.score_button.setDefault(True)
        self.score_button.setToolTip("Rank the candidates (Ctrl+Enter)")
        self.score_button.clicked.connect(self.score)
        copy, export = QPushButton("Copy pick"), QPushButton("Export pick…")
        copy.clicked.connect(self._copy_pick)
        export.clicked.connect(self._export_dialog)
        self.pick_buttons = (copy, export)
        QShortcut(QKeySequence("Ctrl+Return"), self, self.score)
        QShortcut(QKeySequence("Ctrl+Enter"), self, self.score)
        actions = QHBoxLayout()
        actions.addWidget(self.score_button)
        actions.addStretch()
        actions.addWidget(copy)
        actions.addWidget(export)
        res = QWidget()
        rl = QVBoxLayout(res)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.summary)
        rl.addWidget(self.model_line)
        rl.addWidget(self.table, 3)
        rl.addWidget(chart_scroll, 2)

        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self.conversation)
        left.addWidget(cands)
        left.setChildrenCollapsible(False)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(res)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        split.setChildrenCollapsible(False)
        lay = QVBoxLayout(self)
        lay.addWidget(split, 1)
        lay.addLayout(actions)

        self.state.candidates_changed.connect(self._show_candidates)
        self.state.result_changed.connect(self._show_result)
        ctx.runner.started.connect(lambda _l: self.score_button.setEnabled(False))
        ctx.runner.finished.connect(lambda: self.score_button.setEnabled(True))
        self._show_candidates()
        self._show_result()

    # ---- candidates ------------------------------------------------------------------------
    def _show_candidates(self) -> None:
        row = max(0, min(self.list.currentRow(), len(self.state.candidates) - 1))
        self.list.blockSignals(True)
        self.list.clear()
        self.list.addItems([f"{i}. {preview(c)}" for i, c in enumerate(self.state.candidates)])
        self.list.blockSignals(False)
        self.count.setText(f"Candidates ({len(self.state.candidates)})")
        if self.state.candidates:
            self.list.setCurrentRow(row)
            self._pick(row)
        else:
            self.editor.setEnabled(False)

    def _pick(self, row: int) -> None:
        ok = 0 <= row < len(self.state.candidates)
        self.editor.setEnabled(ok)
        self.editor.blockSignals(True)
        self.editor.setPlainText(self.state.candidates[row] if ok else "")
        self.editor.blockSignals(False)

    def _edited(self) -> None:
        row = self.list.currentRow()
        if 0 <= row < len(self.state.candidates):
            text = self.editor.toPlainText()
            self.state.set_candidate(row, text)
            self.list.item(row).setText(f"{row}. {preview(text)}")

    def _remove(self) -> None:
        row = self.list.currentRow()
        if 0 <= row < len(self.state.candidates):
            self.state.remove(row)

    def import_file(self, path: str | Path) -> None:
        try:
            n = self.state.import_file(path)
        except engine.ArbiterError as e:
            self.ctx.notify(str(e))
            return
        self.ctx.notify(f"Imported {n} candidates from {Path(path).name}.", error=False)

    def _import_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import candidates", "",
                                              "Candidates (*.jsonl *.json *.txt);;All files (*)")
        if path:
            self.import_file(path)

    # ---- scoring and result ------------------------------------------------------------
    def score(self) -> None:
        if self.ctx.runner.busy:
            return
        try:
            scorer = self.ctx.session.require()
            conv, cands = self.state.inputs()
        except engine.ArbiterError as e:
            self.ctx.notify(str(e))
            return
        messages = self.state.conversation.messages()

        def job(progress, cancel):
            return rank_in_chunks(scorer, conv, cands, progress=progress, cancel=cancel)

        def done(r: engine.Ranking) -> None:
            self.ctx.history.add_ranking(scorer.info, messages, cands, r)
            self.state.set_result(RankResult(r, scorer.info))

        self.ctx.runner.start(f"Ranking {len(cands)} candidates", job, done)

    def _show_result(self) -> None:
        res = self.state.result
        for b in self.pick_buttons:
            b.setEnabled(res is not None)
        if res is None:
            self.table.setRowCount(0)
            self.chart.set_rows([])
            self.model_line.setText("")
            return
        r, info = res.ranking, res.model
        self.table.setRowCount(len(r.candidates))
        mono = score_font()
        for k, c in enumerate(r.candidates):
            cells = [str(k + 1), str(c.index), f"{c.score.value:+.4f}",
                     "–" if k == 0 else f"{c.p_best_vs_this:.1%}", preview(c.response, 200)]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col in (2, 3):
                    item.setFont(mono)
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if k == 0:
                    item.setBackground(WIN_SOFT)
                    f = item.font()
                    f.setBold(True)
                    item.setFont(f)
                self.table.setItem(k, col, item)
        self.chart.set_rows([(f"#{c.index}", c.score.value) for c in r.candidates])
        summary = f"Best: candidate {r.best.index} of {len(r.candidates)}  ({r.best.score.value:+.4f})"
        windowed = [c for c in r.candidates if c.score.windows > 1]
        if windowed:
            summary += (f"; {len(windowed)} longer than the model reads, scored in windows "
                        f"({windowed[0].score.policy}): " + ", ".join(f"#{c.index}" for c in windowed))
        self.summary.setText(summary)
        self.model_line.setText(model_line(info, r.prompt_shared))

    def _copy_pick(self) -> None:
        if self.state.result is not None:
            QGuiApplication.clipboard().setText(self.state.result.ranking.best.response)
            self.ctx.notify("Copied the best candidate.", error=False)

    def export_pick(self, path: str | Path) -> None:
        Path(path).write_text(self.state.pick_json() + "\n", encoding="utf-8")

    def _export_dialog(self) -> None:
        if self.state.result is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export the pick", "pick.jsonl", "JSONL (*.jsonl)")
        if path:
            self.export_pick(path)

    def reopen(self, conversation: list[dict], candidates: list[str], result: RankResult | None) -> None:
        self.state.conversation.load(conversation)
        self.state.set_candidates(candidates)
        self.state.set_result(result)
