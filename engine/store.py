"""The local SQLite store (sqlite-utils): file hashes now; history, runs, labels later.

One file, ``arbiter.db`` in the data directory. Every write is a transaction, so a
crash never leaves half a record.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import sqlite_utils

from engine.paths import data_dir

_lock = threading.Lock()
_default: dict[Path, Store] = {}


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: GUI workers share the store; writes are serialised by _lock
        self.db = sqlite_utils.Database(sqlite3.connect(str(self.path), check_same_thread=False))
        self.db.execute("PRAGMA journal_mode=WAL")
        self._migrate()

    @classmethod
    def default(cls) -> Store:
        path = data_dir() / "arbiter.db"
        with _lock:
            if path not in _default:
                _default[path] = cls(path)
            return _default[path]

    def _migrate(self) -> None:
        if "file_hashes" not in self.db.table_names():
            self.db["file_hashes"].create(
                {"path": str, "size": int, "mtime_ns": int, "sha256": str}, pk="path"
            )

    def cached_hash(self, path: str, size: int, mtime_ns: int) -> str | None:
        row = self.db.execute(
            "select sha256 from file_hashes where path = ? and size = ? and mtime_ns = ?",
            [path, size, mtime_ns],
        ).fetchone()
        return row[0] if row else None

    def remember_hash(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        with _lock, self.db.conn:
            self.db["file_hashes"].upsert(
                {"path": path, "size": size, "mtime_ns": mtime_ns, "sha256": sha256}, pk="path"
            )
