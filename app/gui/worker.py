"""Scoring off the GUI thread: one job at a time, with progress and Cancel.

A job is a plain function ``fn(progress, cancel) -> result`` (the engine's own
progress callback and :class:`engine.CancelToken`). It runs on a :class:`QThread`;
its progress and its outcome come back to the GUI thread as queued signals, so the
event loop never waits on a model (onnxruntime and llama.cpp release the GIL while
they compute).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer, Signal

import engine

log = logging.getLogger(__name__)

JobFn = Callable[[Callable[[int, int | None], None], engine.CancelToken], Any]


def describe_error(e: BaseException) -> str:
    """A message a user can act on, for any failure a job can have."""
    if isinstance(e, MemoryError):
        return ("Out of memory while scoring. Try fewer or shorter inputs, a smaller batch, "
                "or a quantized model.")
    if isinstance(e, engine.InputTooLongError):
        return f"Too long for this model: {e}"
    if isinstance(e, engine.ArbiterError):
        return str(e)
    # a runtime's own error (onnxruntime, llama.cpp): show it, the app stays usable
    return f"{type(e).__name__}: {e}"


def collect_garbage_on_the_gui_thread(app: QCoreApplication) -> None:
    """Python's cyclic GC runs in whichever thread allocates when a threshold trips. In a
    worker thread it can free a cycle holding a Qt object, whose C++ side must die on the GUI
    thread: that segfaulted ``arbiter gui --screenshot`` (faulthandler: "Garbage-collecting"
    inside a worker's import of a backend), and a pytest-qt run whose application the app had
    not made (a job's JSON reading, a closed view's cycle). So automatic collection is off and
    the GUI thread collects, on a timer, whenever the allocation counters say it would have.
    :class:`JobRunner` installs it on the running application, so every window with jobs has it."""
    import gc

    gc.disable()  # again on every call: a test harness may have turned it back on between windows
    if getattr(app, "_arbiter_gc_timer", None) is not None:
        return
    threshold = gc.get_threshold()

    def collect() -> None:
        counts = gc.get_count()
        if counts[0] > threshold[0]:
            gen = 2 if counts[2] > threshold[2] else 1 if counts[1] > threshold[1] else 0
            gc.collect(gen)

    timer = QTimer(app)
    timer.setInterval(500)  # ms
    timer.timeout.connect(collect)
    timer.start()
    app._arbiter_gc_timer = timer


class _Thread(QThread):
    progressed = Signal(int, int)  # done, total (-1: unknown)
    succeeded = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, fn: JobFn, token: engine.CancelToken) -> None:
        super().__init__()
        self.fn, self.token = fn, token

    def run(self) -> None:
        try:
            result = self.fn(lambda d, t: self.progressed.emit(d, -1 if t is None else t), self.token)
        except engine.Cancelled:
            self.cancelled.emit()
        except BaseException as e:  # noqa: BLE001 - every failure becomes a message in the window
            log.debug("job failed", exc_info=True)
            self.failed.emit(describe_error(e))
        else:
            if self.token.cancelled:
                self.cancelled.emit()  # finished, but the user asked to drop it
            else:
                self.succeeded.emit(result)


class JobRunner(QObject):
    """Runs one job at a time and tells the window what is happening.

    ``started(label)``, ``progressed(done, total)``, ``finished()`` (always, after the
    job's own outcome callback), ``failed(message)``, ``cancelled()``.
    """

    started = Signal(str)
    progressed = Signal(int, int)
    finished = Signal()
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        if (app := QCoreApplication.instance()) is not None:
            collect_garbage_on_the_gui_thread(app)  # before any job can run the GC in its thread
        self._thread: _Thread | None = None
        self._token: engine.CancelToken | None = None
        #: what a Cancel of the current (or last) job leaves behind, said by the job that started
        self.cancel_message = "Cancelled."

    @property
    def busy(self) -> bool:
        return self._thread is not None

    @property
    def job_thread(self) -> QThread | None:
        """The running job's thread, or None (not ``thread()``: that is QObject's own). Its
        ``progressed`` signal is emitted on that thread, from inside the job, so a direct
        connection runs inside the job (tests hold a job mid-way with one)."""
        return self._thread

    def start(self, label: str, fn: JobFn, on_success: Callable[[Any], None], *,
              cancel_message: str = "Cancelled; nothing was saved.") -> bool:
        """Start a job; False (and nothing happens) while another one runs. ``cancel_message``
        is what the window says if it is cancelled: a job that keeps its work (moderation rows,
        imported pairs) says so instead of the default."""
        if self._thread is not None:
            return False
        self.cancel_message = cancel_message
        self._token = engine.CancelToken()
        thread = _Thread(fn, self._token)
        thread.progressed.connect(self.progressed)
        thread.succeeded.connect(on_success)
        thread.failed.connect(self.failed)
        thread.cancelled.connect(self.cancelled)
        thread.finished.connect(self._done)
        self._thread = thread
        self.started.emit(label)
        thread.start()
        return True

    def cancel(self) -> None:
        if self._token is not None:
            self._token.cancel()

    def wait(self, ms: int = 30000) -> None:
        """Block until the job ends (shutdown and the screenshot command only)."""
        if self._thread is not None:
            self._thread.wait(ms)

    def _done(self) -> None:
        thread, self._thread, self._token = self._thread, None, None
        if thread is not None:
            thread.deleteLater()
        self.finished.emit()
