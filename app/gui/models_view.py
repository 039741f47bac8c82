"""Models view: every registered model, its details, add/remove, device and threads, and
"Serve this model" (`arbiter serve` in a child process, its URL shown)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

import engine
from app.gui.context import AppContext
from app.gui.widgets import read_only_table
from engine import devices, registry

NO_DEFAULT = ("No default model in this build; add one (a .gguf file, or an ONNX or "
              "Hugging Face folder) with Add file… or Add folder….")
DEVICES = list(devices.DEVICES)  # the engine's vocabulary (engine/devices.py)


def disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


_LISTENING = re.compile(r"arbiter serve: listening on (http://\S+)")
#: how long a stopping server gets to finish its in-flight requests before it is killed, ms
STOP_GRACE_MS = 10_000


def serve_command() -> list[str]:
    """How to run `arbiter serve` from here: this Python, or the bundle's CLI beside the app."""
    if getattr(sys, "frozen", False):
        cli = Path(sys.executable).with_name("arbiter" + (".exe" if sys.platform == "win32" else ""))
        return [str(cli), "serve"]
    return [sys.executable, "-m", "app.cli.main", "serve"]


class ModelServer(QObject):
    """One `arbiter serve` child process. A QProcess is asynchronous: starting, reading its
    output and stopping never block the GUI thread, and the model loads in the child, not here.

    ``state`` is ``"stopped"``, ``"starting"`` (until the server prints the address it bound)
    or ``"running"``; ``url`` is set while running. Stop sends SIGTERM (in-flight requests
    finish), then kills after :data:`STOP_GRACE_MS`.
    """

    changed = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.proc: QProcess | None = None
        self.state, self.url, self.model, self.error = "stopped", "", "", ""
        self.exit_code: int | None = None
        self._log = ""

    def start(self, model: str, *, device: str = "cpu", threads: int = 0) -> None:
        if self.proc is not None:
            return
        args = [*serve_command()[1:], "--model", model, "--port", "0", "--device", device]
        if threads:
            args += ["--threads", str(threads)]
        proc = QProcess(self)
        proc.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        proc.setStandardOutputFile(QProcess.nullDevice())
        proc.readyReadStandardError.connect(self._read)
        proc.finished.connect(self._finished)
        self.proc, self.model, self.url, self.error, self.exit_code, self._log = proc, model, "", "", None, ""
        self.state = "starting"
        proc.start(serve_command()[0], args)
        self.changed.emit()

    def stop(self) -> None:
        """Ask the server to stop (SIGTERM); it is killed if it has not exited after the grace."""
        if self.proc is None:
            return
        proc = self.proc
        proc.terminate()
        QTimer.singleShot(STOP_GRACE_MS, lambda: proc.kill() if self.proc is proc else None)

    def stop_and_wait(self) -> None:
        """For the app's shutdown: stop, and wait for the exit (bounded by the grace)."""
        if self.proc is not None:
            self.proc.terminate()
            if not self.proc.waitForFinished(STOP_GRACE_MS):
                self.proc.kill()
                self.proc.waitForFinished(STOP_GRACE_MS)

    def _read(self) -> None:
        assert self.proc is not None
        self._log = (self._log + bytes(self.proc.readAllStandardError()).decode("utf-8", "replace"))[-4000:]
        if self.state == "starting" and (m := _LISTENING.search(self._log)):
            self.state, self.url = "running", m.group(1)
            self.changed.emit()

    def _finished(self, code: int, _status: QProcess.ExitStatus) -> None:
        if self.proc is not None:
            self._read()
        was = self.state
        self.state, self.url, self.exit_code = "stopped", "", code
        if was == "starting":  # it never listened: say why (the CLI's own error line)
            lines = [ln for ln in self._log.splitlines() if ln.strip()]
            self.error = lines[-1] if lines else f"arbiter serve exited with code {code}"
        if self.proc is not None:
            self.proc.deleteLater()
        self.proc = None
        self.changed.emit()


class ModelsView(QWidget):
    #: the user asked to score with this model (name or path)
    use_requested = Signal(str)
    #: device or threads changed (the window saves them and reopens the model)
    settings_changed = Signal()

    def __init__(self, ctx: AppContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.notice = QLabel(NO_DEFAULT)
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet("background: #eef4fb; border: 1px solid #b7cbe3; border-radius: 4px;"
                                  " padding: 8px; color: #222;")
        self.table = read_only_table(["Name", "Format", "Size", "Location"])
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.itemSelectionChanged.connect(self._selected)
        self.table.doubleClicked.connect(lambda _i: self._use())

        self.use_button, details, add_file, add_dir, self.remove_button = (
            QPushButton("Use for scoring"), QPushButton("Details"), QPushButton("Add file…"),
            QPushButton("Add folder…"), QPushButton("Remove"))
        self.use_button.clicked.connect(self._use)
        details.clicked.connect(self.load_details)
        add_file.clicked.connect(lambda: self._add_dialog(folder=False))
        add_dir.clicked.connect(lambda: self._add_dialog(folder=True))
        self.remove_button.clicked.connect(self._remove_dialog)
        buttons = QHBoxLayout()
        for b in (self.use_button, details, self.remove_button):
            buttons.addWidget(b)
        self.server = ModelServer(self)
        self.serve_button = QPushButton("Serve this model")
        self.serve_button.clicked.connect(self._toggle_serving)
        self.serve_status = QLabel("")
        self.serve_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.server.changed.connect(self._server_changed)
        buttons.addWidget(self.serve_button)
        buttons.addWidget(self.serve_status)
        buttons.addStretch()
        buttons.addWidget(add_file)
        buttons.addWidget(add_dir)

        self.details = QFormLayout()
        self.detail_labels: dict[str, QLabel] = {}
        for key in ("name", "format", "architecture", "quantization", "max length", "chat template",
                    "length control", "provider", "size", "sha256"):
            lab = QLabel("–")
            lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            lab.setWordWrap(True)
            self.detail_labels[key] = lab
            self.details.addRow(key.capitalize(), lab)
        box = QGroupBox("Details")
        box.setLayout(self.details)

        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.threads = QSpinBox()
        self.threads.setRange(0, 256)
        self.threads.setSpecialValueText("automatic")
        self.device.setCurrentText(ctx.session.device)
        self.threads.setValue(ctx.session.threads)
        self.device.currentTextChanged.connect(self._settings)
        self.threads.valueChanged.connect(self._settings)
        run = QGroupBox("Runtime")
        rf = QFormLayout(run)
        rf.addRow("Device", self.device)
        rf.addRow("CPU threads", self.threads)
        rf.addRow(QLabel("A GPU that is not available falls back to the CPU, with a warning."))

        lay = QVBoxLayout(self)
        lay.addWidget(self.notice)
        lay.addWidget(self.table, 1)
        lay.addLayout(buttons)
        bottom = QHBoxLayout()
        bottom.addWidget(box, 2)
        bottom.addWidget(run, 1, Qt.AlignmentFlag.AlignTop)
        lay.addLayout(bottom, 1)
        self.refresh()

    # ---- the list ----------------------------------------------------------------------
    def refresh(self) -> None:
        self.entries = registry.list_models()
        self.notice.setVisible(not any(e.builtin for e in self.entries))
        self.table.setRowCount(len(self.entries))
        for r, e in enumerate(self.entries):
            cells = [e.name + ("  (built-in)" if e.builtin else ""), e.format,
                     human_size(disk_size(e.path)), str(e.path)]
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self._selected()

    def selected(self) -> registry.Entry | None:
        rows = self.table.selectionModel().selectedRows()
        return self.entries[rows[0].row()] if rows else None

    def select(self, name: str) -> None:
        for r, e in enumerate(self.entries):
            if e.name == name:
                self.table.selectRow(r)

    def _selected(self) -> None:
        e = self.selected()
        self.use_button.setEnabled(e is not None)
        self.remove_button.setEnabled(e is not None and not e.builtin)
        self.serve_button.setEnabled(e is not None or self.server.state != "stopped")
        info = self.ctx.session.info
        if e is not None and info is not None and self.ctx.session.spec == e.name:
            self.show_info(info, e)
        elif e is not None:
            self._clear_details(e)

    def _clear_details(self, e: registry.Entry) -> None:
        for lab in self.detail_labels.values():
            lab.setText("–")
        self.detail_labels["name"].setText(e.name)
        self.detail_labels["format"].setText(e.format)
        self.detail_labels["size"].setText(human_size(disk_size(e.path)))
        self.detail_labels["architecture"].setText("press Details to open the model")

    def show_info(self, info: engine.ModelInfo, e: registry.Entry | None = None) -> None:
        d = self.detail_labels
        d["name"].setText(info.name)
        d["format"].setText(info.format)
        d["architecture"].setText(f"{info.architecture} (pooling: {info.pooling})")
        d["quantization"].setText(info.dtype)
        d["max length"].setText(f"{info.max_length} tokens")
        d["chat template"].setText("yes" if info.chat_template else "no: text-pair encoding (cross-encoder)")
        d["length control"].setText(
            f"score = output − {info.length_correction:.4f} × log(1 + response characters)"
            if info.length_correction else "none: scores are the model's output")
        d["provider"].setText(info.provider)
        d["size"].setText(human_size(sum(f.size for f in info.files)))
        # the weights file's hash in full would not fit: a prefix to compare by eye, all in the tooltip
        files = sorted(info.files, key=lambda f: -f.size)
        d["sha256"].setText("\n".join(f"{Path(f.path).name}  {f.sha256[:16]}…" for f in files[:3])
                            + (f"\n(+{len(files) - 3} more)" if len(files) > 3 else "") or "–")
        d["sha256"].setToolTip("\n".join(f"{Path(f.path).name}  {f.sha256}" for f in files))

    def load_details(self) -> None:
        """Open the selected model on a worker just to read what it is."""
        e = self.selected()
        if e is None or self.ctx.runner.busy:
            return
        session = self.ctx.session

        def job(progress, cancel):
            with session.open(e.name) as rm:
                return rm.info

        self.ctx.runner.start(f"Reading {e.name}", job, lambda info: self.show_info(info, e))

    def _use(self) -> None:
        e = self.selected()
        if e is not None:
            self.use_requested.emit(e.name)

    # ---- add / remove ------------------------------------------------------------------------
    def add(self, path: str | Path) -> registry.Entry | None:
        try:
            e = registry.add(Path(path))
        except (engine.ArbiterError, OSError) as err:
            self.ctx.notify(str(err))
            return None
        self.refresh()
        self.select(e.name)
        self.ctx.notify(f"Added {e.name} ({e.format}).", error=False)
        return e

    def _add_dialog(self, *, folder: bool) -> None:
        if folder:
            path = QFileDialog.getExistingDirectory(self, "Add a model folder (ONNX or Hugging Face)")
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Add a model file", "", "Models (*.gguf *.onnx);;All files (*)")
        if path:
            self.add(path)

    def remove(self, name: str) -> None:
        if self.ctx.session.spec == name:
            self.ctx.session.close()
        try:
            registry.remove(name)
        except (engine.ArbiterError, OSError) as err:
            self.ctx.notify(str(err))
        self.refresh()

    def _remove_dialog(self) -> None:
        e = self.selected()
        if e is None or e.builtin:
            return
        if QMessageBox.question(self, "Remove model", f"Delete {e.name} from the models folder?\n{e.path}") \
                == QMessageBox.StandardButton.Yes:
            self.remove(e.name)

    # ---- serving -----------------------------------------------------------------------------
    def _toggle_serving(self) -> None:
        if self.server.state != "stopped":
            self.server.stop()
            self.serve_status.setText("stopping…")
            return
        e = self.selected()
        if e is not None:
            self.server.start(e.name, device=self.ctx.session.device, threads=self.ctx.session.threads)

    def _server_changed(self) -> None:
        s = self.server
        self.serve_button.setText("Serve this model" if s.state == "stopped" else "Stop serving")
        if s.state == "starting":
            self.serve_status.setText(f"starting {s.model}…")
        elif s.state == "running":
            self.serve_status.setText(f"{s.model} at <a href=\"{s.url}/info\">{s.url}</a>")
            self.serve_status.setOpenExternalLinks(True)
        else:
            self.serve_status.setText("")
            if s.error:
                self.ctx.notify(f"arbiter serve did not start: {s.error}")
        self._selected()

    def _settings(self) -> None:
        self.ctx.session.device = self.device.currentText()
        self.ctx.session.threads = self.threads.value()
        self.settings_changed.emit()
