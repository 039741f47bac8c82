"""Small widgets the views share: the conversation editor, bars, the message banner."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontDatabase, QPainter, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTableWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.state.conversation import ConversationState

#: the winner's subtle highlight, and the loser's bar (calm, readable in light and dark)
WIN = QColor("#2e8b57")
WIN_SOFT = QColor(46, 139, 87, 40)
OTHER = QColor("#8a94a6")


def read_only_table(headers: list[str]) -> QTableWidget:
    """A table of whole-row selections that nobody edits; the last column takes the spare width."""
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.verticalHeader().hide()
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    hh = table.horizontalHeader()
    for col in range(len(headers) - 1):
        hh.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
    hh.setSectionResizeMode(len(headers) - 1, QHeaderView.ResizeMode.Stretch)
    return table


def score_font(point_delta: int = 0) -> QFont:
    """The one monospace font in the UI: numbers line up, everything else is the system font."""
    f = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    if point_delta:
        f.setPointSize(max(6, f.pointSize() + point_delta))
    return f


def model_line(info, shared: bool) -> str:
    """``name · format dtype · provider``, plus the prompt-sharing note; empty parts left out
    (a result reopened from history does not know its provider)."""
    parts = [info.name, f"{info.format} {info.dtype}", info.provider]
    text = "  ·  ".join(p for p in parts if p.strip())
    return text + ("  ·  prompt computed once" if shared else "")


def score_detail(s) -> str:
    """What a score rests on, shown beside it: tokens read and conversation cut."""
    parts = [f"{s.n_tokens} tokens"] if s.n_tokens else []
    if s.cut_tokens:
        parts.append(f"{s.cut_tokens} cut from the start")
    return ", ".join(parts)


def window_note(s) -> str:
    """How a response longer than the model reads was scored; empty when it fit."""
    return f"Longer than the model reads: scored in {s.windows} windows ({s.policy})." if s.windows > 1 else ""


def muted(label: QLabel) -> QLabel:
    pal = label.palette()
    pal.setColor(QPalette.ColorRole.WindowText, pal.color(QPalette.ColorRole.PlaceholderText))
    label.setPalette(pal)
    return label


def text_edit(placeholder: str, lines: int = 3) -> QPlainTextEdit:
    e = QPlainTextEdit()
    e.setPlaceholderText(placeholder)
    e.setTabChangesFocus(True)
    e.setMinimumHeight(e.fontMetrics().lineSpacing() * lines + 12)
    return e


class ConversationEditor(QWidget):
    """System prompt plus turns (role + text), editing a :class:`ConversationState`."""

    def __init__(self, state: ConversationState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.system = text_edit("System prompt (optional)", 2)
        self.system.setMaximumHeight(self.system.minimumHeight() + 20)
        self.system.textChanged.connect(lambda: setattr(state, "system", self.system.toPlainText()))
        self._turns = QVBoxLayout()
        self._turns.setSpacing(6)
        box = QWidget()
        inner = QVBoxLayout(box)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.addLayout(self._turns)
        add = QPushButton("Add turn")
        add.setToolTip("Add the next message (roles alternate user / assistant)")
        add.clicked.connect(state.add_turn)
        row = QHBoxLayout()
        row.addWidget(add)
        row.addStretch()
        inner.addLayout(row)
        inner.addStretch()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(box)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        title = QLabel("Conversation")
        title.setStyleSheet("font-weight: 600")
        lay.addWidget(title)
        lay.addWidget(self.system)
        lay.addWidget(scroll, 1)
        self.editors: list[QPlainTextEdit] = []
        state.changed.connect(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        """Show the state's turns (after add/remove/load; typing does not rebuild)."""
        if self.system.toPlainText() != self.state.system:
            self.system.setPlainText(self.state.system)
        while self._turns.count():
            w = self._turns.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self.editors = []
        for i, turn in enumerate(self.state.turns):
            self._turns.addWidget(self._turn_row(i, turn.role, turn.content))

    def _turn_row(self, i: int, role: str, content: str) -> QWidget:
        row = QWidget()
        h = QHBoxLayout(row)
        h.setContentsMargins(0, 0, 0, 0)
        combo = QComboBox()
        combo.addItems(["user", "assistant"])
        combo.setCurrentText(role)
        combo.currentTextChanged.connect(lambda r, i=i: self.state.set_role(i, r))
        edit = text_edit("User message" if role == "user" else "Assistant message", 2)
        edit.setPlainText(content)
        edit.textChanged.connect(lambda i=i, e=edit: self.state.set_text(i, e.toPlainText()))
        remove = QToolButton()
        remove.setText("×")
        remove.setToolTip("Remove this turn")
        remove.setEnabled(len(self.state.turns) > 1)
        remove.clicked.connect(lambda _=False, i=i: self.state.remove_turn(i))
        left = QVBoxLayout()
        left.addWidget(combo)
        left.addStretch()
        h.addLayout(left)
        h.addWidget(edit, 1)
        h.addWidget(remove, 0, Qt.AlignmentFlag.AlignTop)
        self.editors.append(edit)
        return row


class ProbabilityBar(QWidget):
    """P(A better than B) as one bar: A's share from the left, B's from the right."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.p: float | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("P(A better than B) = sigmoid(score A − score B)")

    def set_probability(self, p: float | None) -> None:
        self.p = p
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(300, self.fontMetrics().height() + 12)

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        r = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        base = self.palette().color(QPalette.ColorRole.Base)
        p.setPen(self.palette().color(QPalette.ColorRole.Mid))
        p.setBrush(base)
        p.drawRoundedRect(r, 4, 4)
        if self.p is None:
            return
        a_w = r.width() * self.p
        a_col, b_col = (WIN, OTHER) if self.p >= 0.5 else (OTHER, WIN)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(a_col)
        p.drawRoundedRect(QRectF(r.left(), r.top(), a_w, r.height()), 4, 4)
        p.setBrush(b_col)
        p.drawRoundedRect(QRectF(r.left() + a_w, r.top(), r.width() - a_w, r.height()), 4, 4)
        p.setPen(QColor("white"))
        p.setFont(score_font())
        pad = r.adjusted(8, 0, -8, 0)
        p.drawText(pad, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, f"A {self.p:.1%}")
        p.drawText(pad, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, f"{1 - self.p:.1%} B")


class ScoreChart(QWidget):
    """Horizontal bars, one per candidate (best first), length relative to the score range."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[tuple[str, float]] = []
        self.setMinimumHeight(80)

    def set_rows(self, rows: list[tuple[str, float]]) -> None:
        self.rows = rows[:30]  # a chart of 400 bars says nothing; the table has them all
        self.setMinimumHeight(max(80, len(self.rows) * (self.fontMetrics().height() + 6) + 8))
        self.update()

    def paintEvent(self, _event) -> None:
        if not self.rows:
            return
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm, f = self.fontMetrics(), score_font()
        row_h = fm.height() + 6
        label_w = max(fm.horizontalAdvance(label) for label, _ in self.rows) + 10
        value_w = p.fontMetrics().horizontalAdvance("+00.0000") + 16
        values = [v for _, v in self.rows]
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        width = max(10.0, self.width() - label_w - value_w - 4)
        text = self.palette().color(QPalette.ColorRole.WindowText)
        for k, (label, v) in enumerate(self.rows):
            y = 4 + k * row_h
            p.setPen(text)
            p.setFont(self.font())
            p.drawText(QRectF(0, y, label_w - 8, row_h), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)
            frac = 0.08 + 0.92 * (v - lo) / span  # the worst still shows a stub
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(WIN if k == 0 else OTHER)
            p.drawRoundedRect(QRectF(label_w, y + 3, width * frac, row_h - 6), 3, 3)
            p.setPen(text)
            p.setFont(f)
            p.drawText(QRectF(label_w + width * frac + 6, y, value_w, row_h), Qt.AlignmentFlag.AlignVCenter, f"{v:+.4f}")


class Banner(QFrame):
    """A message across the top of the window: errors, notices. Closing it hides it."""

    closed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("×")
        close.setAutoRaise(True)
        close.clicked.connect(self.hide)
        h = QHBoxLayout(self)
        h.setContentsMargins(10, 6, 6, 6)
        h.addWidget(self.label, 1)
        h.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    def show_message(self, text: str, *, error: bool = True) -> None:
        bg, border = ("#fdecea", "#e0a8a3") if error else ("#eef4fb", "#b7cbe3")
        self.setStyleSheet(f"Banner {{ background: {bg}; border: 1px solid {border}; border-radius: 4px; }}"
                           "QLabel { color: #222; }")
        self.label.setText(text)
        self.show()
