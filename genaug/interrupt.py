"""A Ctrl-C that no library can swallow.

Python answers SIGINT by raising KeyboardInterrupt wherever the main thread
happens to be. Some libraries catch it there: torch's first optimizer
imports torch._dynamo, which imports sympy and mpmath, whose
`try: import gmpy2 except:` eats an interrupt that lands in it, and the job
then runs to the end and writes its outputs as if nothing happened.

`install()` (the CLI calls it; the Python API leaves the caller's handler
alone) remembers that an interrupt came, and `check()`, called where work
is long (every training step, every progress step) and before any output
is renamed into place, raises it again. An interrupt so always stops the
job before it writes anything, however it was first caught.

An interrupt that lands while a module is being imported is only noted, and
`check()` raises it at the next step: a KeyboardInterrupt raised inside an
import may run through C++ (torch's `_c10d_init` calls back into Python),
which cannot carry it and aborts the process instead.
"""

from __future__ import annotations

import signal
import threading

_received = False


def _inside_import(frame) -> bool:
    """Whether `frame` runs under the import machinery (frozen, or from source)."""
    while frame is not None:
        name = frame.f_code.co_filename
        if "importlib._bootstrap" in name or "importlib/_bootstrap" in name:
            return True
        frame = frame.f_back
    return False


def _handler(signum, frame) -> None:
    global _received
    _received = True
    if not _inside_import(frame):
        raise KeyboardInterrupt


def install() -> None:
    """Answer SIGINT with a KeyboardInterrupt that `check()` raises again later.

    Only from the main thread (the only one that may set handlers), and only
    over Python's default handler: a caller's own handler, or an ignored
    SIGINT (a job started in the background), stays as it was.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _handler)


def received() -> bool:
    """Whether a SIGINT has come since `install()`."""
    return _received


def check() -> None:
    """Raise KeyboardInterrupt if a SIGINT has come, even if it was caught and dropped since."""
    if _received:
        raise KeyboardInterrupt
