"""Rich progress bars for long work, silent when there is no console."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from genaug import interrupt
from genaug.terminal import markup_safe


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
