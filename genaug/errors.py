"""The one exception type users see, and the one warning type.

Anything that is the user's input being wrong (a missing file, a corrupt
image, a wrong column name, a checkpoint that is not ours) raises
`GenaugError` with a message that fits on one line. The CLI prints that line
and exits non-zero; the Python API lets it propagate.
"""

from __future__ import annotations

import warnings


class GenaugError(Exception):
    """A problem with the user's input, reported as one clear line."""


class GenaugWarning(UserWarning):
    """A job did what was asked but the result may not be what was meant (the message names the fix).

    Jobs called from Python raise each of their result's `warnings` as one;
    the CLI prints them itself and silences these.
    """


def warn_all(messages, stacklevel: int = 3) -> None:
    """Each message as a GenaugWarning, attributed to the caller of the job that calls this."""
    for message in messages:
        warnings.warn(message, GenaugWarning, stacklevel=stacklevel)


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none):
    what a one-line error quotes of a library's multi-line message."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def shown(text: str, limit: int = 200) -> str:
    """`text` fit for a one-line message: control characters escaped, long text cut.

    Paths, ids and column names come from the dataset: a newline in one
    would split the error line, a megabyte-long one would flood the screen.
    """
    text = str(text)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else f"{text[:limit]}..."


def shown_names(names: list[str], limit: int = 50) -> str:
    """The first `limit` of `names` (columns, say) as one comma-separated line, each cut to 40 characters."""
    return ", ".join(shown(n, 40) for n in names[:limit])
