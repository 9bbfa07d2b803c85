"""The `genaug` command. `main` is the console-script entry point.

It imports the typer app only once a Ctrl-C can be answered: an interrupt
at any moment, during start-up imports included, is one line and exit 130.
"""

from __future__ import annotations

import os
import sys

INTERRUPTED_EXIT_CODE = 130


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    try:
        from genaug.cli.app import main as run

        return run(argv)
    except KeyboardInterrupt:
        interrupted()


def interrupted() -> None:
    """Say so in one line and leave at once with exit code 130.

    `os._exit`: a second Ctrl-C while the interpreter shuts down (joining
    worker threads, atexit handlers) would otherwise print a traceback.
    Files being written are temp files; the next write cleans them up.
    """
    try:
        sys.stdout.flush()
    except Exception:  # stdout may be closed or a broken pipe
        pass
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    finally:
        os._exit(INTERRUPTED_EXIT_CODE)
