"""Where Arbiter keeps its things: ``$ARBITER_HOME`` or the user's data directory."""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import InputError


def _folder(path: Path, what: str) -> Path:
    """``path`` as an existing folder, or an InputError that says what is in the way."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{what} {path} is not a folder (a file is in the way); point "
                         "ARBITER_HOME at a folder, or move that file") from None
    except OSError as e:
        raise InputError(f"{what} {path} cannot be created ({e.strerror}); set ARBITER_HOME "
                         "to a folder you can write") from None
    return path


def data_dir() -> Path:
    """The user's Arbiter folder (models/, arbiter.db). ``ARBITER_HOME`` overrides it."""
    env = os.environ.get("ARBITER_HOME")
    if env:
        return _folder(Path(env).expanduser(), "ARBITER_HOME:")
    from platformdirs import user_data_dir

    return _folder(Path(user_data_dir("arbiter", appauthor=False)), "the data folder")


def models_dir() -> Path:
    return _folder(data_dir() / "models", "the models folder")


def builtin_dir() -> Path:
    """Package data: the built-in default model. ``ARBITER_BUILTIN`` points elsewhere
    (a packager's own default, or an empty folder to run without one)."""
    env = os.environ.get("ARBITER_BUILTIN")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent / "builtin"
