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
    from genaug import interrupt  # no imports of its own: installed before anything slow

    interrupt.install()
    try:
        from genaug.cli.app import main as run

        code = run(argv)
    except KeyboardInterrupt:
        leave(INTERRUPTED_EXIT_CODE, "interrupted")
    if code == INTERRUPTED_EXIT_CODE:  # the app said "interrupted" already
        leave(code)
    if interrupt.received():  # caught and dropped by a library after the last check
        leave(INTERRUPTED_EXIT_CODE, "interrupted")
    return code


def leave(code: int, message: str | None = None) -> None:
    """Print `message` (one line) and exit with `code` at once, skipping interpreter shutdown.

    `os._exit` after an interrupt: the interpreter's shutdown (joining worker
    threads, atexit handlers, half-imported extension modules) can meet the
    interrupt again and print a traceback or die by the signal instead of
    exiting 130. Files being written are temp files; the next write cleans them.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # closed, a broken pipe, or the write the interrupt cut short ("reentrant call")
            pass
    if message is not None:
        try:
            os.write(2, (message + "\n").encode())  # unbuffered: works even when sys.stderr is mid-write
        except OSError:
            pass
    os._exit(code)
