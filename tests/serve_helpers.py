"""A real `arbiter serve` in a subprocess, for the serve tests (tests/test_serve*.py).

``start_server(args)`` runs ``python -m app.cli.main serve --port 0 ARGS`` (the server picks a
free port and prints it; no port is guessed), waits for that line and for ``GET /health``,
and returns a :class:`ServerHandle`. ``handle.stop()`` sends SIGTERM (the graceful path) and
returns the exit code. Tests that talk to it need ``@pytest.mark.enable_socket``
(pytest-socket blocks sockets otherwise).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"arbiter serve: listening on (http://\S+)")
#: generous bounds on a hang (model loading on 2 busy cores, torch imports): failures, not speed checks
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 120.0


@dataclass
class ServerHandle:
    url: str
    proc: subprocess.Popen
    _stderr: list[str] = field(default_factory=list, repr=False)
    _reader: threading.Thread | None = field(default=None, repr=False)
    what: str = "arbiter serve"  # the server's name in failures

    def client(self, **kwargs) -> httpx.Client:
        """An HTTP client on this server (no proxies from the environment, a hang-guard timeout)."""
        kwargs.setdefault("timeout", STOP_TIMEOUT_S)
        return httpx.Client(base_url=self.url, trust_env=False, **kwargs)

    def stderr(self) -> str:
        """Everything the server wrote to stderr so far (all of it once it has exited)."""
        if self.proc.poll() is not None and self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)
        return "".join(self._stderr)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait for the graceful exit, and return the exit code (SIGKILL only on a hang)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.what} did not stop on SIGTERM:\n{self.stderr()}") from None
        finally:
            self.stderr()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "app.cli.main", "serve", *args]


def start_server(args: list[str], env: dict[str, str] | None = None) -> ServerHandle:
    """Start `arbiter serve ARGS` on 127.0.0.1 and a free port; return when /health answers."""
    if "--port" not in args:
        args = ["--port", "0", *args]
    handle = start_listening(serve_command(args), _LISTENING, "arbiter serve", env=env)
    with handle.client() as c:
        r = c.get("/health")
        assert r.status_code == 200, r.text
    return handle


def start_listening(cmd: list[str], listening: re.Pattern[str], what: str, *,
                    env: dict[str, str] | None = None, start_timeout: float = START_TIMEOUT_S) -> ServerHandle:
    """Run a server subprocess that prints ``listening`` (group 1: its URL) on stderr once bound.

    stderr is drained for the process's whole life (its pipe never fills); a server that exits
    or hangs before that line is an AssertionError carrying everything it wrote."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, encoding="utf-8", errors="replace")
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            m = listening.search(line)
            if m and not found.is_set():
                url.append(m.group(1))
                found.set()
        found.set()  # EOF: the server exited before listening

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not found.wait(start_timeout) or not url:
        proc.kill()
        proc.wait()
        reader.join(STOP_TIMEOUT_S)
        raise AssertionError(f"{what} did not start (exit {proc.returncode}):\n{''.join(lines)}")
    return ServerHandle(url[0], proc, lines, reader, what)
