"""The `arbiter` command. Each command lives in its own module and registers itself."""

from __future__ import annotations

import argparse
import logging
import sys

from app.cli import convert, evaluate, models, scoring, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arbiter", description="Score responses with reward models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show runtime logs")
    sub = parser.add_subparsers(dest="command", required=True)
    scoring.register(sub)
    models.register(sub)
    convert.register(sub)
    train.register(sub)
    evaluate.register(sub)
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


def main(argv: list[str] | None = None) -> int:
    from engine.errors import ArbiterError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ArbiterError as e:
        print(f"arbiter: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arbiter: interrupted", file=sys.stderr)
        return 130


def desktop() -> int:
    return main(["gui"])


if __name__ == "__main__":
    sys.exit(main())
