"""What reaches a terminal: user text made inert.

File names, ids, labels and class names come from datasets collected
anywhere. Printed as they are, `[/x]` is rich markup (an error while
printing the error), `[link=...]` a clickable link, and an ESC sequence can
clear the screen or set the window title. Every console genaug creates is a
`SafeConsole`: it never reads markup or emoji codes, and every string it
renders has its control characters written out as escapes (`\\x1b`), so a
user string can neither style the output nor command the terminal, and a
newline in a file name cannot split a one-line error.
"""

from __future__ import annotations

import re

from rich.console import Console
from rich.markup import escape

# C0 and C1 controls, DEL, bidirectional overrides (they reorder what is shown)
# and lone surrogates (undecodable bytes of a file name; unprintable).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def inert(text: object, *, keep_newlines: bool = False) -> str:
    """`str(text)` with every control character written as a visible escape (ESC -> `\\x1b`).

    `keep_newlines` leaves newlines and tabs alone, for text that is meant to
    span lines (a YAML recipe); anything a single line is built from escapes them.
    """
    if keep_newlines:
        return _UNSAFE.sub(lambda m: m.group() if m.group() in "\n\t" else _escape_one(m), str(text))
    return _UNSAFE.sub(_escape_one, str(text))


def _escape_one(match: re.Match) -> str:
    ch = match.group()
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def markup_safe(text: object) -> str:
    """`inert(text)` with rich markup escaped, for the places that always read markup (progress bars)."""
    return escape(inert(text))


class SafeConsole(Console):
    """A rich console for user-derived text: no markup, no emoji codes, no highlighting,
    control characters escaped in every string it renders (table cells included)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("emoji", False)
        kwargs.setdefault("highlight", False)
        super().__init__(**kwargs)

    def render_str(self, text: str, **kwargs):
        """Turn `text` into a Text with its control characters escaped first."""
        return super().render_str(inert(text, keep_newlines=True), **kwargs)
