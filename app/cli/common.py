"""Shared pieces of the CLI: model options, output (human or --json), a progress bar."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def add_model_options(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--model", "-m", default="default", required=required,
                   help="registered name, path, or 'default' (the built-in model)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, directml, coreml, or auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the runtime's choice)")
    p.add_argument("--max-length", type=int, default=None, help="token limit (default: the model's)")
    p.add_argument("--no-length-control", dest="length_control", action="store_false",
                   help="raw model output: do not subtract the model's length correction, if it has one")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def load_model(args: argparse.Namespace, **extra: Any):
    import engine

    opts: dict[str, Any] = {"device": args.device, "threads": args.threads, "max_length": args.max_length}
    opts.update(extra)
    rm = engine.load(args.model, **opts)
    rm.length_control = getattr(args, "length_control", True)
    return rm


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, ensure_ascii=False, indent=2)
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
