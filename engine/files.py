"""File identities (size and sha256) with a cache, so a 2 GB model is hashed once."""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.types import FileInfo


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_info(path: Path, *, root: Path | None = None) -> FileInfo:
    """Size and sha256 of ``path``, cached in the local store by (path, size, mtime)."""
    from engine.store import Store

    path = Path(path).resolve()
    st = path.stat()
    store = Store.default()
    digest = store.cached_hash(str(path), st.st_size, st.st_mtime_ns)
    if digest is None:
        digest = sha256_file(path)
        store.remember_hash(str(path), st.st_size, st.st_mtime_ns, digest)
    shown = str(path.relative_to(root)) if root and path.is_relative_to(root) else str(path)
    return FileInfo(shown, st.st_size, digest)


def folder_files(folder: Path, suffixes: tuple[str, ...]) -> tuple[FileInfo, ...]:
    """FileInfo of the files in ``folder`` whose names end with one of ``suffixes``."""
    folder = Path(folder).resolve()
    return tuple(file_info(p, root=folder) for p in sorted(folder.iterdir())
                 if p.is_file() and p.name.endswith(suffixes))
