"""Shared pieces of the CLI: model options, output (human or --json), a progress bar."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def add_model_options(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    from engine.devices import DEFAULT_DEVICE, cli_help

    p.add_argument("--model", "-m", default="default", required=required,
                   help="registered name, path, or 'default' (the built-in model)")
    p.add_argument("--device", default=DEFAULT_DEVICE, help=cli_help())
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the runtime's choice)")
    p.add_argument("--max-length", type=int, default=None, help="token limit (default: the model's)")
    p.add_argument("--no-length-control", dest="length_control", action="store_false",
                   help="raw model output: do not subtract the model's length correction, if it has one")
    p.add_argument("--format", dest="model_format", choices=["onnx", "gguf", "torch"], default=None,
                   help="runtime: for --model default, which shipped copy (default: the fastest measured, "
                        "`arbiter models info default` says which and why); else the model's own")


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (a batch size, a limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def read_utf8(path: str) -> str:
    """The text of ``path``; a missing file, a folder or bytes that are not UTF-8 are an
    InputError naming the file (and the line of the first bad byte)."""
    from engine.errors import InputError

    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise InputError("is a folder; give a file", source=path) from None
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror})", source=path) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         "save the file as UTF-8", source=path, line=line) from None


def check_input_file(path: str) -> None:
    """Fail before a model loads when the input cannot be a readable file ('-' is stdin)."""
    from engine.errors import InputError

    if path == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise InputError("is a folder; give a JSONL file (or '-' for standard input)", source=path)
    if not p.exists():
        raise InputError("no such file", source=path)


def finite_or_null(obj: Any) -> Any:
    """NaN and infinities -> None, recursively: JSON has no NaN (``json.dumps`` would write a
    bare ``NaN`` that most readers reject). Scores are checked before this; other numbers
    (an undefined correlation) are honestly unknown, which null says."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(v) for v in obj]
    return obj


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def load_model(args: argparse.Namespace, **extra: Any):
    import engine

    opts: dict[str, Any] = {"device": args.device, "threads": args.threads, "max_length": args.max_length}
    opts.update(extra)
    rm = engine.load(args.model, format=getattr(args, "model_format", None), **opts)
    rm.length_control = getattr(args, "length_control", True)
    return rm


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    if getattr(args, "json", False):
        json.dump(finite_or_null(data), sys.stdout, ensure_ascii=False, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(human)


class ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, *, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.monotonic()

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        rate = done / max(time.monotonic() - self.start, 1e-9)
        if total:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "." * (width - filled)
            sys.stderr.write(f"\r{self.label} [{bar}] {done}/{total} {rate:.1f}/s")
        else:
            sys.stderr.write(f"\r{self.label} {done} {rate:.1f}/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
