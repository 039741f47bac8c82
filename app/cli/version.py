"""`arbiter --version`: the version and, in the desktop bundle, what CPU the bundle needs.

The bundle's llama.cpp is compiled for a fixed instruction-set baseline (packaging/), so a
user on an old CPU needs a plain answer to "will this run here?" before a crash does it.
``dist/arbiter/BUILD_INFO.json`` (written by packaging/arbiter.spec) holds the record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def bundle_info() -> dict[str, Any] | None:
    """BUILD_INFO.json beside the frozen executable, or None outside a bundle (or unreadable)."""
    if not getattr(sys, "frozen", False):
        return None
    try:
        return json.loads((Path(sys.executable).resolve().parent / "BUILD_INFO.json").read_text())
    except (OSError, ValueError):
        return None


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("arbiter")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _cpu_flags() -> set[str] | None:
    """This CPU's feature flags (Linux /proc/cpuinfo), None where that file does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def version_text() -> str:
    info = bundle_info()
    if info is None:
        return f"arbiter {_package_version()}"
    cpu = info.get("cpu", {})
    needs = list(cpu.get("needs", []))
    lines = [f"arbiter {info.get('arbiter', '?')} (desktop bundle, built {info.get('built', '?')}, "
             f"{info.get('platform', '?')})",
             f"llama.cpp CPU baseline: needs {' '.join(needs) or 'no extra instruction sets'}; "
             f"not used: {' '.join(cpu.get('not_used', [])) or '-'}"]
    flags = _cpu_flags()
    if flags is not None and needs:
        missing = [f for f in needs if f not in flags]
        lines.append("this CPU: has all of them" if not missing
                     else f"this CPU lacks {' '.join(missing)}: GGUF models will not run here "
                          "(ONNX models may)")
    lines.append(f"llama.cpp build: {info.get('llama_cpp_system_info', '?')}")
    packages = info.get("packages", {})
    lines.append("packages: " + ", ".join(f"{k} {v}" for k, v in packages.items()))
    return "\n".join(lines)
