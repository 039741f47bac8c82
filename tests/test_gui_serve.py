"""Models view, "Serve this model": a real `arbiter serve` child process, started and stopped from
the GUI without blocking it (pytest-qt, offscreen)."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
import httpx  # noqa: E402

from app.gui.main_window import MainWindow  # noqa: E402

#: a hang guard for a child process loading a model on 2 busy cores, not a speed check
START_MS = 300_000

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]


@pytest.fixture
def window(qtbot):
    w = MainWindow(None, open_model=False)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.shutdown()
    assert w.models.server.proc is None  # shutdown ends the server too


def test_serve_this_model_starts_shows_the_url_and_stops(window, qtbot):
    view = window.models
    view.select("default")
    assert view.serve_button.isEnabled() and view.serve_button.text() == "Serve this model"
    view.serve_button.click()
    # the click returned while the child was still loading: the GUI thread never waited on it
    assert view.server.state == "starting" and "starting default" in view.serve_status.text()
    qtbot.waitUntil(lambda: view.server.state != "starting", timeout=START_MS)
    assert view.server.state == "running", view.server.error
    url = view.server.url
    assert url.startswith("http://127.0.0.1:") and url in view.serve_status.text()
    assert view.serve_button.text() == "Stop serving"
    with httpx.Client(base_url=url, trust_env=False, timeout=60) as c:
        r = c.post("/v1/score", json={"prompt": "What is 2+2?", "responses": ["4", "5"]})
        assert r.status_code == 200 and len(r.json()["scores"]) == 2

    view.serve_button.click()
    qtbot.waitUntil(lambda: view.server.state == "stopped", timeout=START_MS)
    assert view.server.exit_code == 143  # SIGTERM's graceful exit, as `arbiter serve` documents
    assert view.serve_button.text() == "Serve this model" and view.serve_status.text() == ""
    with pytest.raises(httpx.ConnectError), httpx.Client(base_url=url, trust_env=False) as c:
        c.get("/health")


def test_a_server_that_cannot_start_says_why(window, qtbot, tmp_path):
    """A model that does not open: the child exits 2 before binding; the banner shows its error."""
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF not really")
    window.models.select("default")
    window.models.server.start(str(bad))
    qtbot.waitUntil(lambda: window.models.server.state == "stopped", timeout=START_MS)
    assert window.models.server.exit_code == 2
    assert "arbiter: error:" in window.models.server.error and "broken.gguf" in window.models.server.error
    assert window.models.serve_button.text() == "Serve this model"
    assert "did not start" in window.banner.label.text() and "broken.gguf" in window.banner.label.text()
