"""Rich progress bars for long work, silent when there is no console.

Every job takes `console`: a rich Console to report on, None for silence,
or "auto" (the Python API's default): stderr in a terminal or a Jupyter
notebook, silence when stderr is a file or pipe. `set_progress(False)` or
the environment variable GENAUG_PROGRESS=0 silences "auto" everywhere;
GENAUG_PROGRESS=1 turns it on even without a terminal. The CLI passes its
own console (none with --quiet).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from genaug import interrupt
from genaug.terminal import SafeConsole, markup_safe

AUTO = "auto"
_OFF, _ON = ("0", "false", "no", "off"), ("1", "true", "yes", "on")
_chosen: bool | None = None


def set_progress(enabled: bool | None) -> None:
    """Show progress (and job summaries) for jobs called with console="auto": True, False,
    or None to go back to the default (a terminal or notebook, unless GENAUG_PROGRESS says otherwise)."""
    global _chosen
    _chosen = None if enabled is None else bool(enabled)


def progress_enabled() -> bool:
    """Whether console="auto" reports: set_progress, else GENAUG_PROGRESS, else a terminal or notebook."""
    if _chosen is not None:
        return _chosen
    env = os.environ.get("GENAUG_PROGRESS", "").strip().lower()
    if env in _OFF or env in _ON:
        return env in _ON
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        tty = False
    return tty or Console().is_jupyter


def resolve_console(console) -> Console | None:
    """The console a job reports on: `console` itself, or for "auto" stderr when progress is enabled."""
    if isinstance(console, str):
        if console != AUTO:
            raise ValueError(f"console must be a rich Console, None or 'auto', got {console!r}")
        return SafeConsole(stderr=True) if progress_enabled() else None
    return console


@contextmanager
def progress_bar(console: Console | None, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; draws a bar on `console` (stderr in the CLI), nothing when it is None."""
    if console is None:
        yield lambda n: interrupt.check()
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        # Descriptions may quote user text (a recipe path); progress bars read markup.
        task = bar.add_task(markup_safe(description), total=total)

        def advance(n: int) -> None:
            interrupt.check()  # long work stops at a Ctrl-C even if a library swallowed it
            bar.advance(task, n)

        yield advance
