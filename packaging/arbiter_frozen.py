"""What the frozen entry points do before the CLI: stand in for ``python -m``.

In a PyInstaller bundle ``sys.executable`` is the app itself, not a Python. The engine
runs its llama.cpp safety probe as ``sys.executable -m engine.backends.gguf_probe MODEL``
(a crash in llama.cpp's fast kernels must kill a child, not the app), so the bundle's
executables answer exactly that command line. Only modules listed here run: the bundle is
not a general-purpose Python.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

# modules a frozen executable may be asked to run as ``-m MODULE ARGS...`` (by the engine)
_CHILD_MODULES: dict[str, Callable[[list[str]], int]] = {}


def _gguf_probe(args: list[str]) -> int:
    from engine.backends.gguf_probe import _child

    if len(args) != 1:
        print("usage: -m engine.backends.gguf_probe MODEL.gguf", file=sys.stderr)
        return 2
    return _child(args[0])


_CHILD_MODULES["engine.backends.gguf_probe"] = _gguf_probe


def child_command(argv: list[str]) -> int | None:
    """The exit code of ``argv`` run as a child module, or None when it is a normal command line."""
    if len(argv) >= 3 and argv[1] == "-m" and argv[2] in _CHILD_MODULES:
        return _CHILD_MODULES[argv[2]](argv[3:])
    return None
