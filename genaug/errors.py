"""The one exception type users see.

Anything that is the user's input being wrong (a missing file, a corrupt
image, a wrong column name, a checkpoint that is not ours) raises
`GenaugError` with a message that fits on one line. The CLI prints that line
and exits non-zero; the Python API lets it propagate.
"""


class GenaugError(Exception):
    """A problem with the user's input, reported as one clear line."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none):
    what a one-line error quotes of a library's multi-line message."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
