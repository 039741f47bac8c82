"""Layout rules import-linter cannot see: ``bench/`` is not a package it graphs, and
``tests`` is not one of its root packages. Nothing outside ``tests/`` may import ``tests``
(a benchmark or the app must run from a checkout without the test suite's helpers)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: every folder of code that is not the test suite
NOT_TESTS = ("bench", "engine", "app", "trainer", "exports")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, function-level (lazy) imports included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def imports_of_tests(folder: Path) -> list[str]:
    """``FILE:LINE: imports MODULE`` for each import of ``tests`` under a folder."""
    return [f"{p.relative_to(folder.parent)}:{line}: imports {mod}"
            for p in sorted(folder.rglob("*.py"))
            for line, mod in imported_modules(p)
            if mod == "tests" or mod.startswith("tests.")]


def test_imported_modules_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef f():\n    from tests.models import tiny_decoder\n    import tests\n")
    assert imported_modules(f) == [(1, "os"), (4, "tests.models"), (5, "tests")]
    assert len(imports_of_tests(tmp_path)) == 2


def test_nothing_outside_tests_imports_tests():
    bad = [msg for folder in NOT_TESTS for msg in imports_of_tests(ROOT / folder)]
    assert bad == [], "\n".join(bad)
