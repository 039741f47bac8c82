"""The local SQLite store (sqlite-utils): file hashes now; history, runs, labels later.

One file, ``arbiter.db`` in the data directory, shared by every Arbiter process on the
machine (two ``arbiter score`` runs, the app, an evaluation). So every connection is
opened by :func:`connect`: WAL journal (readers never block the writer), a busy timeout
(a writer waits for another instead of failing with "database is locked"), and schema
changes inside ``BEGIN IMMEDIATE`` (:func:`write_transaction`), so two processes
migrating a fresh file at once take turns. Every write is a transaction, so a crash
never leaves half a record.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

import sqlite_utils

from engine.errors import ArbiterError
from engine.paths import data_dir

#: how long a connection waits for another process's write lock before giving up (seconds)
BUSY_TIMEOUT_S = 60.0

_lock = threading.Lock()
_default: dict[Path, Store] = {}
_T = TypeVar("_T")


class StoreError(ArbiterError):
    """The local database cannot be opened or read (not a database, damaged)."""


def damaged(path: Path, e: BaseException) -> StoreError:
    """The error a user sees for a database that cannot be read, with what to do about it.

    Only the app's own ``arbiter.db`` is safe to replace (its contents are caches and logs that
    Arbiter rebuilds); any other database (a curation run, annotations, a moderation job) holds
    work that only a copy can bring back, so the advice differs."""
    path = Path(path)
    if path.name == "arbiter.db":
        return StoreError(
            f"{path}: the local database cannot be read ({e}). It holds the hash cache, the app's "
            f"history and evaluation and training runs; move it aside (mv '{path}' '{path}.damaged') "
            "and Arbiter starts a new one")
    return StoreError(
        f"{path}: the database cannot be read ({e}): it is damaged, or not an SQLite file Arbiter "
        "wrote. Nothing was changed in it; restore it from a copy, or point Arbiter at another file")


def _retry_locked(fn: Callable[[], _T], deadline_s: float = BUSY_TIMEOUT_S) -> _T:
    """``fn()``, retried while SQLite answers "locked"/"busy" without waiting itself.

    Switching a fresh file to WAL needs an exclusive lock, and SQLite can report it busy
    at once instead of calling the busy handler (it does so where waiting could deadlock).
    """
    end = time.monotonic() + deadline_s
    delay = 0.005  # seconds, doubled up to 0.2
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            msg = str(e)
            if ("locked" not in msg and "busy" not in msg) or time.monotonic() > end:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def connect(path: str | Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection to ``path`` in WAL mode with a busy timeout; StoreError if it is no database."""
    path = Path(path)
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=check_same_thread)
    except sqlite3.Error as e:
        raise damaged(path, e) from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")  # milliseconds
        _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
    except sqlite3.DatabaseError as e:
        conn.close()
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            raise
        raise damaged(path, e) from None
    return conn


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: the write lock is taken first (waiting for it under
    the busy timeout), so a check-then-create migration cannot race another process."""
    if conn.in_transaction:  # already inside one (sqlite3's implicit BEGIN): just join it
        yield conn
        return
    _retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def host() -> str:
    """This machine's name, stored with a run's pid: a pid means something only on its host."""
    return os.uname().nodename


def mark_abandoned_runs(store: Store, table: str) -> int:
    """Rows of ``table`` left "running" by a process that died on this host (kill -9, power
    loss: no cleanup ran) become "interrupted", so nobody waits for them. A row without a pid
    comes from an Arbiter that did not record one, and is taken as dead. Returns how many."""
    from engine.output import pid_alive

    if table not in store.db.table_names() or "pid" not in store.db[table].columns_dict:
        return 0
    here, me = host(), os.getpid()
    rows = store.db.execute(f"select id, pid, host from [{table}] where status = 'running'").fetchall()
    dead = [rid for rid, pid, h in rows if pid is None or (h == here and pid != me and not pid_alive(pid))]
    if dead:
        with store.transaction():
            for rid in dead:
                store.db.execute(f"update [{table}] set status = 'interrupted' "
                                 "where id = ? and status = 'running'", [rid])
    return len(dead)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{self.path.parent}: cannot create the data folder ({e.strerror})") from None
        # check_same_thread=False: GUI workers share the store; writes are serialised by _lock
        self.db = sqlite_utils.Database(connect(self.path, check_same_thread=False))
        try:
            self._migrate()
        except sqlite3.DatabaseError as e:
            self.db.conn.close()
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise
            raise damaged(self.path, e) from None

    @classmethod
    def default(cls) -> Store:
        path = data_dir() / "arbiter.db"
        with _lock:
            if path not in _default:
                _default[path] = cls(path)
            return _default[path]

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction on this store's connection (see :func:`write_transaction`)."""
        return write_transaction(self.db.conn)

    def _migrate(self) -> None:
        with self.transaction():
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
        with _lock, self.transaction():
            self.db["file_hashes"].upsert(
                {"path": path, "size": size, "mtime_ns": mtime_ns, "sha256": sha256}, pk="path"
            )
