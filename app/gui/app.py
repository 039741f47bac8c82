"""Start the desktop app, or render it once to a PNG (``arbiter gui --screenshot FILE``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _application():
    from PySide6.QtWidgets import QApplication

    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and sys.platform.startswith("linux"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no display: render off screen
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Arbiter")
    app.setOrganizationName("Arbiter")
    return app  # the window's JobRunner makes only this thread collect garbage (app/gui/worker.py)


def run(model: str | None = None) -> int:
    from app.gui.main_window import MainWindow

    app = _application()
    window = MainWindow(model)
    window.show()
    return app.exec()


def screenshot(path: str | Path, model: str | None = None) -> int:
    """Render the window with a demo comparison scored by ``model`` (or the default).

    Works with whatever model there is: with none, the window shows why and the PNG
    is still written (exit 0), and stderr says so. Docs are built with this.
    """
    from PySide6.QtCore import QEventLoop, QTimer

    from app.gui.main_window import MainWindow
    from app.obvious import demo_pair

    app = _application()
    window = MainWindow(model, open_model=False)
    window.resize(1180, 760)
    window.show()
    spec = window._start_spec(model)
    state = window.compare.state
    demo = demo_pair()  # fixed in app/data/obvious_cases.jsonl before any model scored it
    state.conversation.load(demo.conversation)
    state.set_responses(demo.a, demo.b)

    def settle() -> None:
        loop = QEventLoop()
        window.runner.finished.connect(loop.quit)
        QTimer.singleShot(120_000, loop.quit)
        loop.exec()
        window.runner.finished.disconnect(loop.quit)

    message = None
    if spec is None:
        message = "no model to score the demo with (no default model in this build; pass --model PATH)"
        window.notify("No default model in this build; add one in Models, or run "
                      "`arbiter gui --screenshot FILE --model PATH`.", error=False)
    else:
        window.open_model(spec)
        settle()
        if window.ctx.session.scorer is None:
            message = f"could not open {spec}: {window.banner.label.text()}"
        else:
            window.compare.score()
            settle()
    app.processEvents()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ok = window.grab().save(str(path))
    window.shutdown()
    if message:
        print(f"arbiter gui: {message}; saved the window as it is", file=sys.stderr)
    if not ok:
        print(f"arbiter gui: could not write {path}", file=sys.stderr)
        return 1
    return 0
