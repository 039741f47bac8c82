"""The main window: navigation, the views, messages, and a status bar with the model and jobs."""

from __future__ import annotations

from PySide6.QtCore import QByteArray, QSettings
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

import engine
from app.gui.annotate_view import AnnotateView
from app.gui.best_of_n import BestOfNView
from app.gui.compare import CompareView
from app.gui.context import AppContext
from app.gui.history import HistoryView
from app.gui.history_store import HistoryStore, Record, restored_scores
from app.gui.models_view import ModelsView
from app.gui.moderate_view import ModerateView
from app.gui.state.best_of_n import RankResult
from app.gui.state.compare import CompareResult
from app.gui.state.session import ModelSession
from app.gui.widgets import Banner, muted
from app.gui.worker import JobRunner
from engine import registry
from engine.paths import data_dir
from engine.types import ranking_from_scores

#: navigation, in the stack's order
PAGES = ["Compare", "Best-of-N", "Moderate", "Annotate", "History", "Models"]


def settings() -> QSettings:
    """Settings live beside the database (an INI file in the data directory), so
    ``ARBITER_HOME`` moves everything together and tests never touch the user's."""
    return QSettings(str(data_dir() / "settings.ini"), QSettings.Format.IniFormat)


class MainWindow(QMainWindow):
    def __init__(self, model: str | None = None, *, open_model: bool = True) -> None:
        super().__init__()
        self.setWindowTitle("Arbiter")
        self.settings = settings()
        session = ModelSession(device=str(self.settings.value("device", "cpu")),
                               threads=int(self.settings.value("threads", 0)))
        self.runner = JobRunner(self)
        self.banner = Banner()
        self.ctx = AppContext(session, self.runner, HistoryStore(), self.notify)

        self.compare = CompareView(self.ctx)
        self.best_of_n = BestOfNView(self.ctx)
        self.moderate = ModerateView(self.ctx)
        self.annotate = AnnotateView(self.ctx)
        self.history = HistoryView(self.ctx)
        self.models = ModelsView(self.ctx)
        self.stack = QStackedWidget()
        for view in (self.compare, self.best_of_n, self.moderate, self.annotate, self.history, self.models):
            self.stack.addWidget(view)
        self.nav = QListWidget()
        for label in PAGES:
            self.nav.addItem(QListWidgetItem(label))
        self.nav.currentRowChanged.connect(self._navigate)
        self.nav.setStyleSheet("QListWidget { padding: 4px; } QListWidget::item { padding: 6px 8px; }")
        self.nav.setFrameShape(QListWidget.Shape.NoFrame)
        self.nav.setFixedWidth(max(self.nav.fontMetrics().horizontalAdvance(p) for p in PAGES) + 120)

        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The model every view scores with")
        self.model_combo.activated.connect(lambda _i: self.open_model(self.model_combo.currentData()))
        side = QWidget()
        sl = QVBoxLayout(side)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(self.nav, 1)
        sl.addWidget(muted(QLabel("Model")))
        sl.addWidget(self.model_combo)
        side.setFixedWidth(self.nav.width())

        body = QWidget()
        bl = QVBoxLayout(body)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(self.banner)
        bl.addWidget(self.stack, 1)
        central = QWidget()
        h = QHBoxLayout(central)
        h.addWidget(side)
        h.addWidget(body, 1)
        self.setCentralWidget(central)

        # status bar: model, then job progress with Cancel while something runs
        self.model_status = QLabel()
        self.model_status.setContentsMargins(8, 0, 0, 0)  # the stylesheet padding is ignored offscreen
        self.job_label = QLabel()
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.runner.cancel)
        sb = self.statusBar()
        sb.setStyleSheet("QStatusBar { padding-left: 8px; } QStatusBar::item { border: none; }")
        sb.addWidget(self.model_status, 1)
        for w in (self.job_label, self.progress, self.cancel_button):
            sb.addPermanentWidget(w)
            w.hide()
        self.runner.started.connect(self._job_started)
        self.runner.progressed.connect(self._job_progress)
        self.runner.finished.connect(self._job_finished)
        self.runner.failed.connect(self.notify)
        self.runner.cancelled.connect(lambda: self.notify(self.runner.cancel_message, error=False))
        session.changed.connect(self._model_changed)
        self.models.use_requested.connect(self.open_model)
        self.models.settings_changed.connect(self._settings_changed)
        self.history.reopen_requested.connect(self.reopen)

        geometry = self.settings.value("geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        else:
            self.resize(1180, 780)
        self.nav.setCurrentRow(int(self.settings.value("page", 0)))
        self._fill_model_combo()
        self._model_changed(None)
        spec = self._start_spec(model)
        if open_model and spec:
            self.open_model(str(spec))

    # ---- messages and navigation -----------------------------------------------------------
    def notify(self, text: str, *, error: bool = True) -> None:
        self.banner.show_message(text, error=error)

    def _navigate(self, row: int) -> None:
        if 0 <= row < self.stack.count():
            self.stack.setCurrentIndex(row)
            if self.stack.currentWidget() is self.history:
                self.history.refresh()

    def show_page(self, name: str) -> None:
        self.nav.setCurrentRow(PAGES.index(name))

    # ---- the model ---------------------------------------------------------------------------
    def _fill_model_combo(self) -> None:
        self.model_combo.clear()
        for e in registry.list_models():
            self.model_combo.addItem(e.name + (" (built-in)" if e.builtin else ""), e.name)
        spec = self.ctx.session.spec
        if spec is not None and self.model_combo.findData(spec) < 0:
            self.model_combo.addItem(spec, spec)  # opened by path (--model PATH)
        self.model_combo.setCurrentIndex(max(0, self.model_combo.findData(spec)))
        self.model_combo.setEnabled(self.model_combo.count() > 0)

    def _start_spec(self, requested: str | None) -> str | None:
        """The requested model, else the last one used (if it still exists), else the default."""
        if requested:
            return requested
        saved = self.settings.value("model")
        if saved:
            try:
                registry.resolve(str(saved))
                return str(saved)
            except engine.ModelError:
                pass  # removed since: fall back quietly
        return self.ctx.session.initial_spec(None)

    def open_model(self, spec: str) -> bool:
        """Open a model on a worker; the views keep working with the old one until then."""
        session = self.ctx.session

        def job(progress, cancel):
            return session.open(spec)

        def done(scorer: engine.Scorer) -> None:
            session.install(spec, scorer)
            self.settings.setValue("model", spec)
            self.banner.hide()

        return self.runner.start(f"Opening {spec}", job, done)

    def _model_changed(self, info: engine.ModelInfo | None) -> None:
        self._fill_model_combo()
        self.models.refresh()
        if info is None:
            default = "" if ModelSession.default_available() else \
                "No default model in this build; add one in Models. "
            self.model_status.setText(f"{default}No model open.")
            return
        template = "chat template" if info.chat_template else "text pair"
        control = "  ·  length-controlled" if info.length_correction else ""
        self.model_status.setText(f"{info.name}  ·  {info.format} {info.dtype}  ·  {info.architecture}"
                                  f"  ·  {template}{control}  ·  {info.provider}")

    def _settings_changed(self) -> None:
        s = self.ctx.session
        self.settings.setValue("device", s.device)
        self.settings.setValue("threads", s.threads)
        if s.spec is not None and not self.runner.busy:
            self.open_model(s.spec)  # device and threads take effect when a model is opened

    # ---- jobs ---------------------------------------------------------------------------------
    def _job_started(self, label: str) -> None:
        self.job_label.setText(label)
        self.progress.setRange(0, 0)  # busy until the first progress report
        for w in (self.job_label, self.progress, self.cancel_button):
            w.show()

    def _job_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            self.progress.setFormat(f"{done} / {total}")

    def _job_finished(self) -> None:
        for w in (self.job_label, self.progress, self.cancel_button):
            w.hide()

    # ---- history -------------------------------------------------------------------------------
    def reopen(self, r: Record) -> None:
        """Put a history row back into its view, inputs and result, as it was scored."""
        if r.kind == "moderate":
            self.show_page("Moderate")
            self.moderate.reopen(r.result)
            return
        info = engine.ModelInfo(r.model, r.format, architecture="", pooling="", max_length=0,
                                chat_template=None, dtype=r.dtype, provider="")
        shared = bool(r.result.get("prompt_shared"))
        if r.kind == "compare":
            a, b = restored_scores(r.scores, r.result)
            c = engine.Comparison(a, b, shared)
            self.compare.reopen(r.conversation, r.responses[0], r.responses[1], CompareResult(c, info))
            self.show_page("Compare")
        else:
            ranking = ranking_from_scores(r.responses, restored_scores(r.scores, r.result),
                                          prompt_shared=shared)
            self.best_of_n.reopen(r.conversation, r.responses, RankResult(ranking, info))
            self.show_page("Best-of-N")

    # ---- shutdown --------------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the job, save settings, free the model and the database. Safe to call twice."""
        self.runner.cancel()
        self.runner.wait()
        self.models.server.stop_and_wait()  # "Serve this model": its child process ends with the app
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("page", self.stack.currentIndex())
        self.settings.sync()
        self.ctx.session.close()
        self.ctx.history.close()
        self.annotate.shutdown()
