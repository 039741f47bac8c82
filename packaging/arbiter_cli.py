"""Frozen entry point of ``dist/arbiter/arbiter``: the CLI (``app.cli.main:main``)."""

import sys

from arbiter_frozen import child_command

if __name__ == "__main__":
    rc = child_command(sys.argv)
    if rc is None:
        from app.cli.main import main

        rc = main()
    sys.exit(rc)
