"""History view: every comparison and ranking, searchable, reopenable, exportable."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.context import AppContext
from app.gui.history_store import Record
from app.gui.widgets import read_only_table, score_font


def summary(r: Record) -> str:
    if r.kind == "moderate":
        return f"{r.result.get('input', '')} (text field {r.result.get('text_field', '')})"
    prompt = next((m["content"] for m in reversed(r.conversation) if m["role"] == "user"), "")
    return " ".join(prompt.split())[:120]


def scores_text(r: Record) -> str:
    if r.kind == "compare":
        return f"A {r.scores[0]:+.3f}  B {r.scores[1]:+.3f}"
    if r.kind == "moderate":
        return f"{r.result.get('flagged', 0)} flagged of {r.result.get('rows', 0)}"
    best = r.result.get("best_index", 0)
    return f"best #{best} {r.scores[best]:+.3f} of {len(r.scores)}"


class HistoryView(QWidget):
    reopen_requested = Signal(object)  # Record

    def __init__(self, ctx: AppContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.records: list[Record] = []
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search prompts, responses and model names")
        self.search.setClearButtonEnabled(True)
        self._debounce = QTimer(self, singleShot=True, interval=200)
        self._debounce.timeout.connect(self.refresh)
        self.search.textChanged.connect(lambda _t: self._debounce.start())
        self.table = read_only_table(["Time (UTC)", "Kind", "Model", "Scores", "Prompt"])
        self.table.doubleClicked.connect(lambda _i: self.reopen())
        reopen, jsonl, csv_, delete = (QPushButton("Reopen"), QPushButton("Export JSONL…"),
                                       QPushButton("Export CSV…"), QPushButton("Delete"))
        reopen.clicked.connect(self.reopen)
        jsonl.clicked.connect(lambda: self._export_dialog("jsonl"))
        csv_.clicked.connect(lambda: self._export_dialog("csv"))
        delete.clicked.connect(self._delete_dialog)
        top = QHBoxLayout()
        top.addWidget(self.search, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(reopen)
        buttons.addWidget(delete)
        buttons.addStretch()
        buttons.addWidget(jsonl)
        buttons.addWidget(csv_)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.table, 1)
        lay.addLayout(buttons)
        self.refresh()

    def refresh(self) -> None:
        self.records = self.ctx.history.search(self.search.text())
        self.table.setRowCount(len(self.records))
        mono = score_font()
        for row, r in enumerate(self.records):
            kind = {"compare": "Compare", "moderate": "Moderate"}.get(r.kind, f"Best-of-{len(r.responses)}")
            cells = [r.created.replace("T", " ")[:19], kind, f"{r.model} ({r.format} {r.dtype})",
                     scores_text(r), summary(r)]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == 3:
                    item.setFont(mono)
                item.setData(Qt.ItemDataRole.UserRole, r.id)
                self.table.setItem(row, col, item)

    def selected(self) -> list[Record]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [self.records[r] for r in rows]

    def reopen(self) -> None:
        sel = self.selected()
        if sel:
            self.reopen_requested.emit(sel[0])

    def export(self, path: str | Path, fmt: str) -> int:
        """Write the selected rows (all shown rows when none is selected)."""
        records = self.selected() or self.records
        text = self.ctx.history.to_jsonl(records) if fmt == "jsonl" else self.ctx.history.to_csv(records)
        Path(path).write_text(text, encoding="utf-8", newline="")
        return len(records)

    def _export_dialog(self, fmt: str) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export history", f"arbiter-history.{fmt}",
                                              f"{fmt.upper()} (*.{fmt})")
        if path:
            n = self.export(path, fmt)
            self.ctx.notify(f"Exported {n} rows to {path}.", error=False)

    def delete(self, ids: list[int]) -> None:
        self.ctx.history.delete(ids)
        self.refresh()

    def _delete_dialog(self) -> None:
        sel = self.selected()
        if sel and QMessageBox.question(self, "Delete history", f"Delete {len(sel)} row(s)?") \
                == QMessageBox.StandardButton.Yes:
            self.delete([r.id for r in sel])
