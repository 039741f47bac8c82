"""The `arbiter` command. Each command lives in its own module and registers itself."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path

from app.cli import annotate, curate, evaluate, export, models, moderate, scoring, serve, train
from app.cli import data as data_command


class _VersionAction(argparse.Action):
    """``--version``; the text is computed only when asked (the bundle reads its BUILD_INFO.json)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from app.cli.version import version_text

        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arbiter", description="Score responses with reward models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show runtime logs")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version (in the desktop bundle: the CPU it needs) and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    scoring.register(sub)
    models.register(sub)
    export.register(sub)
    train.register(sub)
    evaluate.register(sub)
    serve.register(sub)
    moderate.register(sub)
    annotate.register(sub)
    curate.register(sub)
    data_command.register(sub)
    p = sub.add_parser("gui", help="open the desktop app")
    p.add_argument("--model", "-m", default=None,
                   help="registered name, path, or 'default' (default: the last model used, "
                        "else the built-in one)")
    p.add_argument("--screenshot", metavar="FILE", default=None,
                   help="render the window with a demo comparison, save it as PNG and exit")
    p.set_defaults(func=cmd_gui)
    return parser


def cmd_gui(args: argparse.Namespace) -> int:
    try:  # Qt only for this command: the CLI and the engine run without it
        from app.gui import app
    except ImportError as e:
        print(f"arbiter: the desktop app needs PySide6 ({e}); `pip install arbiter[app]`",
              file=sys.stderr)
        return 2
    import faulthandler

    faulthandler.enable()  # a native crash (Qt, a runtime) prints where it happened, for bug reports
    if args.screenshot:
        return app.screenshot(args.screenshot, args.model)
    return app.run(args.model)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so cleanup (temp files, the store) runs as for Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut the cleanup short
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    from engine.errors import ArbiterError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handle_term = args.command != "gui" and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if handle_term else None
    try:
        return args.func(args)
    except ArbiterError as e:
        print(f"arbiter: error: {e}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as e:
        print(f"arbiter: error: {_store_message(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _OPTIONAL_PACKAGES:
            raise
        print(f"arbiter: error: {_missing_package_message(args.command, e.name or '')}", file=sys.stderr)
        return 2
    except Terminated:
        print("arbiter: terminated", file=sys.stderr)
        return 143  # 128 + SIGTERM, what a shell reports for a killed job
    except KeyboardInterrupt:
        print("arbiter: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `arbiter ... --json | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left
    finally:
        if handle_term:  # main() called in-process (tests) gives the caller its handler back
            signal.signal(signal.SIGTERM, previous)


# what an install may lack by design: extras (pip install arbiter[...]), and in the desktop
# bundle the training and export side (packaging/arbiter.spec keeps them out)
_OPTIONAL_PACKAGES = {"torch", "transformers", "accelerate", "optimum", "onnx", "onnx_ir",
                      "safetensors", "convert_hf_to_gguf", "gguf", "matplotlib", "pyarrow",
                      "onnxruntime", "tokenizers", "llama_cpp", "PySide6", "exports", "trainer",
                      "fastapi", "uvicorn", "prometheus_client", "httpx", "usearch"}


def _missing_package_message(command: str, name: str) -> str:
    """A command that needs a package this install does not have: say so, not a traceback."""
    if getattr(sys, "frozen", False):
        return (f"`arbiter {command}` needs {name}, which the desktop bundle leaves out (it scores, "
                "compares and ranks; training, export and HF/torch models need the Python "
                "install: pip install 'arbiter[all]')")
    return f"`arbiter {command}` needs the Python package {name!r}, which is not installed: pip install 'arbiter[all]'"


def _store_message(e: sqlite3.DatabaseError) -> str:
    """What to say when the local database fails mid-command (damaged, or held by another process)."""
    from engine.errors import ArbiterError
    from engine.paths import data_dir
    from engine.store import BUSY_TIMEOUT_S, damaged

    try:
        path = data_dir() / "arbiter.db"
    except ArbiterError:  # the data folder itself is the problem; that error comes first
        path = Path("arbiter.db")
    if "locked" in str(e) or "busy" in str(e):
        return (f"{path}: another process held the database for over {BUSY_TIMEOUT_S:.0f} s ({e}); "
                "try again when it has finished")
    return str(damaged(path, e))


def desktop() -> int:
    return main(["gui"])


if __name__ == "__main__":
    sys.exit(main())
