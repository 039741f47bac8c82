"""Models view: every registered model, its details, add/remove, device and threads."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
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

    def _settings(self) -> None:
        self.ctx.session.device = self.device.currentText()
        self.ctx.session.threads = self.threads.value()
        self.settings_changed.emit()
