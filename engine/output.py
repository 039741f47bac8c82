"""Writing output files the way a user expects ``-o FILE`` to behave.

* **Atomic**: a regular file is written to a hidden temp file beside it and renamed over
  it at the end, so a failed, interrupted or killed run never leaves half a file at the
  output path. The temp name carries the writer's pid (``.NAME.arbiter-PID-XXXXXXXX.tmp``)
  so a later run can remove the ones whose writer is dead (kill -9 runs no cleanup).
* **Through symlinks**: ``-o link`` writes the file the link points at; the link stays.
* **Not-a-file targets**: a folder is refused with a clear error; a character device, a
  FIFO or a socket (``/dev/null``, ``/dev/stdout``, a named pipe) is streamed to directly,
  since there is nothing to rename over and replacing it (as root) would destroy it.
* **Permissions**: a new file gets ``0666 & ~umask`` like any ``open(..., "w")``; an
  existing file keeps its mode.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from engine.errors import InputError

#: what our temp files are called: ``.{target name}.arbiter-{pid}-{8 hex}.tmp``
_TEMP = re.compile(r"^\.(?P<name>.+)\.arbiter-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def temp_name(target: Path, pid: int | None = None) -> Path:
    """A fresh hidden temp path beside ``target`` for the process ``pid`` (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return target.with_name(f".{target.name}.arbiter-{pid}-{secrets.token_hex(4)}.tmp")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (a zombie counts as dead: it writes nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:  # Linux: a killed child not yet reaped by its parent is a zombie ("Z")
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        return not fields or fields[0] != "Z"
    except OSError:
        return True


def stale_temp_files(target: Path) -> list[Path]:
    """Our temp files for ``target`` whose writing process is dead (never another's file)."""
    found = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m and m["name"] == target.name and not pid_alive(int(m["pid"])):
            found.append(Path(entry.path))
    return found


def remove_stale_temp_files(target: Path) -> int:
    """Delete what :func:`stale_temp_files` finds; returns how many went."""
    n = 0
    for p in stale_temp_files(target):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


def resolve_target(path: str | Path) -> tuple[Path, os.stat_result | None]:
    """The file ``path`` names after following symlinks (dangling ones too), and its stat.

    Raises InputError for a folder, or a missing parent that cannot be created.
    """
    shown = str(path)
    try:
        st: os.stat_result | None = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise InputError(f"cannot write here ({e.strerror})", source=shown) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise InputError("is a folder; give the path of a file to write", source=shown)
    if st is not None and not stat.S_ISREG(st.st_mode):
        # a device or pipe is opened by the name given: /dev/stdout resolves to names like
        # /proc/self/fd/pipe:[123] that cannot be opened again
        return Path(path), st
    target = Path(os.path.realpath(path))
    if st is None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create its folder {target.parent} ({e.strerror})",
                             source=shown) from None
    return target, st


@contextmanager
def atomic_output(path: str | Path, *, binary: bool = False,
                  encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open ``path`` for writing; the content appears there only if the block succeeds.

    >>> with atomic_output("scored.jsonl") as f:   # doctest: +SKIP
    ...     f.write("{}\\n")
    """
    target, st = resolve_target(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        # a device, FIFO or socket: stream into it; there is no file to replace
        with open(target, "wb" if binary else "w", **({} if binary else {"encoding": encoding})) as f:
            yield f
        return
    remove_stale_temp_files(target)
    tmp = temp_name(target)
    try:
        # 0o666 through the kernel's umask, as open(..., "w") would create the file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise InputError(f"cannot write in {target.parent} ({e.strerror})", source=str(path)) from None
    try:
        if st is not None:  # replacing a file keeps its permissions
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": encoding})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: some filesystems refuse to open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """The whole of ``text`` at ``path``, atomically (see :func:`atomic_output`)."""
    with atomic_output(path, encoding=encoding) as f:
        f.write(text)
    return Path(path)


def json_line(row: Any, *, source: str | None = None, line: int | None = None) -> str:
    """One JSONL line; a NaN or an infinity anywhere in ``row`` is an error, not bare ``NaN``.

    JSON has no NaN: ``json.dumps`` would write ``NaN``/``-Infinity``, which most readers reject.
    """
    try:
        return json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:
        raise InputError("holds a NaN or infinite number, which JSON cannot represent; "
                         "nothing was written", source=source, line=line) from None
