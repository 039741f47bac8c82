"""Reading benchmark files (JSON arrays or JSONL) with errors that name file, line and field.

The bytes are read by the engine's one JSON reader (engine.jsonl), so a benchmark file
with bad UTF-8, a corrupt ``.gz``, a lone surrogate or absurd nesting gets the same
located message as scoring input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.jsonl import is_json_array, read_array
from engine.jsonl import read_rows as read_jsonl


def _numbered(path: Path) -> Iterator[tuple[int, int, Any]]:
    """(position, line, row): the position is the line number for JSONL and the item
    number (from 1) for a JSON array, whose items keep the keys ``row{N}`` they always had;
    the line is where the row starts, for error messages."""
    if is_json_array(path):
        for i, (line, row) in enumerate(read_array(path), start=1):
            yield i, line, row
        return
    for line, row in read_jsonl(path):
        yield line, line, row


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(position, row) for every row. JSONL: the line number; a JSON array: the item number."""
    for n, _, row in _numbered(Path(path)):
        yield n, row


def first_row(path: Path) -> Any | None:
    """The first row of a file, or None when it is not JSON/JSONL at all (format detection)."""
    try:
        for _, row in read_rows(path):
            return row
    except (InputError, OSError):
        return None
    return None


class Row:
    """Typed access to one row's fields; every failure is an InputError naming the field."""

    def __init__(self, row: Any) -> None:
        if not isinstance(row, dict):
            raise InputError(f"expected a JSON object, got {type(row).__name__}")
        self.row = row

    def get(self, name: str, default: Any = None) -> Any:
        return self.row.get(name, default)

    def has(self, name: str) -> bool:
        return name in self.row

    def text(self, name: str, *, allow_empty: bool = True) -> str:
        if name not in self.row:
            raise InputError("missing", field=name)
        v = self.row[name]
        if not isinstance(v, str):
            raise InputError(f"must be a string, got {type(v).__name__}", field=name)
        if not allow_empty and not v.strip():
            raise InputError("is empty", field=name)
        return v

    def texts(self, name: str, *, n: int | None = None, min_n: int = 1) -> list[str]:
        if name not in self.row:
            raise InputError("missing", field=name)
        v = self.row[name]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise InputError("must be a list of strings", field=name)
        if n is not None and len(v) != n:
            raise InputError(f"must hold exactly {n} responses, has {len(v)}", field=name)
        if len(v) < min_n:
            raise InputError(f"must hold at least {min_n} response(s)", field=name)
        return v

    def choice(self, name: str, allowed: dict[Any, Any]) -> Any:
        if name not in self.row:
            raise InputError("missing", field=name)
        v = self.row[name]
        key = v.strip() if isinstance(v, str) else v
        for k, out in allowed.items():
            if key == k or (isinstance(k, int) and isinstance(key, str) and key == str(k)):
                return out
        raise InputError(f"must be one of {', '.join(map(str, allowed))}; got {v!r}", field=name)


def rows(path: Path, build: Callable[[int, Row], Any]) -> list[Any]:
    """Apply ``build`` to every row; the first bad row raises, placed at its file and line."""
    out = []
    for n, line, raw in _numbered(Path(path)):
        try:
            item = build(n, Row(raw))
        except InputError as e:
            located = e.located(str(path), line)
            if n != line:  # a JSON array: say which item too (one-line arrays are common)
                located = InputError(f"{e.reason} (array item {n})", source=str(path), line=line,
                                     field=e.field)
            raise located from None
        if item is not None:
            out.append(item)
    return out
