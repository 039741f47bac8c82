"""Compare view: a conversation, responses A and B side by side, and who wins by how much."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

import engine
from app.gui.context import AppContext
from app.gui.state.compare import CompareResult, CompareState
from app.gui.state.session import long_response_options
from app.gui.widgets import (
    WIN,
    ConversationEditor,
    ProbabilityBar,
    model_line,
    muted,
    score_detail,
    score_font,
    text_edit,
    window_note,
)


def verdict(winner: str, p_a: float) -> str:
    """Say how sure the model is, not only who won: 50.1% is not a clear win."""
    if winner == "tie":
        return "A tie"
    p = p_a if winner == "A" else 1 - p_a
    return f"{winner} is better" if p >= 0.6 else f"{winner} is slightly better (close to even)"


class ResponsePane(QFrame):
    """One response: header with Paste/Clear, the editor, and its score under it."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.setObjectName("pane")
        self.title = QLabel(f"Response {label}")
        self.title.setStyleSheet("font-weight: 600")
        self.edit = text_edit(f"Response {label}: the next assistant turn", 5)
        paste, clear = QToolButton(), QToolButton()
        paste.setText("Paste")
        paste.setToolTip(f"Replace response {label} with the clipboard")
        paste.clicked.connect(lambda: self.edit.setPlainText(QGuiApplication.clipboard().text()))
        clear.setText("Clear")
        clear.clicked.connect(self.edit.clear)
        head = QHBoxLayout()
        head.addWidget(self.title)
        head.addStretch()
        head.addWidget(paste)
        head.addWidget(clear)
        self.score = QLabel("–")
        self.score.setFont(score_font(4))
        self.score.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.detail = muted(QLabel(""))
        # how a long response was read: its own line, wrapped, so it never widens the pane
        self.note = muted(QLabel(""))
        self.note.setWordWrap(True)
        self.note.hide()
        foot = QHBoxLayout()
        foot.addWidget(self.score)
        foot.addStretch()
        foot.addWidget(self.detail)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 8, 8, 8)
        lay.addLayout(head)
        lay.addWidget(self.edit, 1)
        lay.addLayout(foot)
        lay.addWidget(self.note)
        self.set_winner(False)

    def show_note(self, text: str) -> None:
        self.note.setText(text)
        self.note.setVisible(bool(text))

    def set_winner(self, winner: bool) -> None:
        if winner:
            self.setStyleSheet(f"#pane {{ border: 1px solid {WIN.name()}; border-radius: 6px;"
                               " background: rgba(46, 139, 87, 22); }")
        else:
            self.setStyleSheet("#pane { border: 1px solid transparent; border-radius: 6px; }")


class CompareView(QWidget):
    def __init__(self, ctx: AppContext, state: CompareState | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.state = state or CompareState()
        self.conversation = ConversationEditor(self.state.conversation)
        self.pane_a, self.pane_b = ResponsePane("A"), ResponsePane("B")
        self.pane_a.edit.textChanged.connect(self._edited)
        self.pane_b.edit.textChanged.connect(self._edited)

        self.score_button = QPushButton("Score")
        self.score_button.setDefault(True)
        self.score_button.setToolTip("Score both responses (Ctrl+Enter)")
        self.score_button.clicked.connect(self.score)
        swap, clear = QPushButton("Swap A/B"), QPushButton("Clear")
        swap.setToolTip("Swap the two responses (Ctrl+Shift+S)")
        swap.clicked.connect(self.state.swap)
        clear.clicked.connect(self.state.clear)
        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            QShortcut(QKeySequence(keys), self, self.score)
        QShortcut(QKeySequence("Ctrl+Shift+S"), self, self.state.swap)

        self.verdict = QLabel("Write a conversation and two responses, then Score.")
        self.verdict.setStyleSheet("font-weight: 600")
        self.margin = QLabel("")
        self.margin.setFont(score_font())
        self.bar = ProbabilityBar()
        self.model_line = muted(QLabel(""))
        result = QGridLayout()
        result.setHorizontalSpacing(12)
        result.addWidget(self.verdict, 0, 0, 1, 2)
        result.addWidget(muted(QLabel("P(A better than B)")), 1, 0)
        result.addWidget(self.bar, 1, 1)
        result.addWidget(muted(QLabel("Margin (A − B)")), 2, 0)
        result.addWidget(self.margin, 2, 1)
        result.addWidget(self.model_line, 3, 0, 1, 2)
        result.setColumnStretch(1, 1)

        buttons = QHBoxLayout()
        buttons.addWidget(self.score_button)
        buttons.addWidget(swap)
        buttons.addWidget(clear)
        buttons.addStretch()

        panes = QWidget()
        ph = QHBoxLayout(panes)
        ph.setContentsMargins(0, 0, 0, 0)
        ph.addWidget(self.pane_a)
        ph.addWidget(self.pane_b)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.conversation)
        split.addWidget(panes)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setChildrenCollapsible(False)
        lay = QVBoxLayout(self)
        lay.addWidget(split, 1)
        lay.addLayout(buttons)
        lay.addLayout(result)

        self.state.responses_changed.connect(self._show_responses)
        self.state.result_changed.connect(self._show_result)
        ctx.runner.started.connect(lambda _l: self.score_button.setEnabled(False))
        ctx.runner.finished.connect(lambda: self.score_button.setEnabled(True))
        self._show_result()

    # ---- state <-> editors -----------------------------------------------------------
    def _edited(self) -> None:
        self.state.a, self.state.b = self.pane_a.edit.toPlainText(), self.pane_b.edit.toPlainText()

    def _show_responses(self) -> None:
        for pane, text in ((self.pane_a, self.state.a), (self.pane_b, self.state.b)):
            if pane.edit.toPlainText() != text:
                pane.edit.setPlainText(text)

    def _show_result(self) -> None:
        r = self.state.result
        if r is None:
            for pane in (self.pane_a, self.pane_b):
                pane.score.setText("–")
                pane.detail.setText("")
                pane.show_note("")
                pane.set_winner(False)
            self.bar.set_probability(None)
            self.margin.setText("")
            self.model_line.setText("")
            return
        c, info = r.comparison, r.model
        for pane, s, won in ((self.pane_a, c.score_a, c.winner == "A"), (self.pane_b, c.score_b, c.winner == "B")):
            pane.score.setText(f"{s.value:+.4f}")
            pane.detail.setText(score_detail(s))
            pane.show_note(window_note(s))
            pane.set_winner(won)
        self.verdict.setText(verdict(c.winner, c.p_a_better))
        self.margin.setText(f"{c.margin:+.4f}")
        self.bar.set_probability(c.p_a_better)
        self.model_line.setText(model_line(info, c.prompt_shared))

    # ---- scoring -------------------------------------------------------------------------
    def score(self) -> None:
        if self.ctx.runner.busy:
            return
        try:
            scorer = self.ctx.session.require()
            conv, a, b = self.state.inputs()
        except engine.ArbiterError as e:
            self.ctx.notify(str(e))
            return
        messages = self.state.conversation.messages()

        def job(progress, cancel):
            return scorer.compare(conv, a, b, **long_response_options(scorer))

        def done(c: engine.Comparison) -> None:
            info = scorer.info
            self.ctx.history.add_comparison(info, messages, a, b, c)
            self.state.set_result(CompareResult(c, info))

        self.ctx.runner.start("Scoring A and B", job, done)

    def reopen(self, conversation: list[dict], a: str, b: str, result: CompareResult | None) -> None:
        self.state.conversation.load(conversation)
        self.state.set_responses(a, b)
        self.state.set_result(result)

