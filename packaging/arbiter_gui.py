"""Frozen entry point of ``dist/arbiter/arbiter-desktop``: the desktop app.

Same as ``arbiter gui`` and takes its options (``--model``, ``--screenshot FILE``). On
Windows and macOS this executable is built without a console (see arbiter.spec).
"""

import sys

from arbiter_frozen import child_command

if __name__ == "__main__":
    rc = child_command(sys.argv)
    if rc is None:
        from app.cli.main import main

        rc = main(["gui", *sys.argv[1:]])
    sys.exit(rc)
