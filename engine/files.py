"""File identities (size and sha256) with a cache, so a 2 GB model is hashed once."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from pathlib import Path

from engine.types import FileInfo

log = logging.getLogger(__name__)
_warned: set[str] = set()  # damaged stores already reported in this process


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_info(path: Path, *, root: Path | None = None) -> FileInfo:
    """Size and sha256 of ``path``, cached in the local store by (path, size, mtime).

    The store is only a cache here: when ``arbiter.db`` is damaged the hash is computed
    anyway and a warning says what to do, so plain scoring never stops on it.
    """
    from engine.store import Store, StoreError

    path = Path(path).resolve()
    st = path.stat()
    digest = None
    try:
        store = Store.default()
        digest = store.cached_hash(str(path), st.st_size, st.st_mtime_ns)
    except (StoreError, sqlite3.DatabaseError) as e:
        store = None
        _warn_once(e)
    if digest is None:
        digest = sha256_file(path)
        try:
            if store is not None:
                store.remember_hash(str(path), st.st_size, st.st_mtime_ns, digest)
        except sqlite3.DatabaseError as e:
            _warn_once(e)
    shown = str(path.relative_to(root)) if root and path.is_relative_to(root) else str(path)
    return FileInfo(shown, st.st_size, digest)


def _warn_once(e: Exception) -> None:
    from engine.paths import data_dir
    from engine.store import StoreError, damaged

    err = e if isinstance(e, StoreError) else damaged(data_dir() / "arbiter.db", e)
    if str(err) not in _warned:
        _warned.add(str(err))
        log.warning("file hashes are not cached: %s", err)


def folder_files(folder: Path, suffixes: tuple[str, ...]) -> tuple[FileInfo, ...]:
    """FileInfo of the files in ``folder`` whose names end with one of ``suffixes``."""
    folder = Path(folder).resolve()
    return tuple(file_info(p, root=folder) for p in sorted(folder.iterdir())
                 if p.is_file() and p.name.endswith(suffixes))


def model_digest(files: tuple[FileInfo, ...]) -> str:
    """One sha256 for a model: its file's, or for a folder the sha256 of its files' list
    (relative path and sha256 of each), which is what moderation thresholds are tied to."""
    files = tuple(sorted(files, key=lambda f: f.path))
    if len(files) == 1:
        return files[0].sha256
    listing = "".join(f"{f.path}\t{f.sha256}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()
