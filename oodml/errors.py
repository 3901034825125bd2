"""The one exception type that reaches users as a one-line message.

Anything raised as :class:`OodmlError` is a problem with the user's input or
environment (a missing file, a malformed annotation, a wrong name).  The CLI
prints its message on one line and exits with status 2; library callers catch
it like any other exception.  Bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations

import reprlib


class OodmlError(Exception):
    """A user-facing error whose message says what is wrong and how to fix it."""

    exit_code = 2

    def __str__(self) -> str:
        # One line, always: multi-line causes (e.g. from PIL) are folded.
        return " ".join(super().__str__().split())


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _quoting() -> reprlib.Repr:
    """A ``repr`` that cuts long strings, huge numbers and deep or long containers (Python 3.11 has no kwargs)."""
    quoting = reprlib.Repr()
    quoting.maxstring = quoting.maxlong = quoting.maxother = 40
    quoting.maxlevel, quoting.maxlist, quoting.maxdict = 2, 4, 4
    return quoting


_QUOTING = _quoting()


def brief(value: object, limit: int = 60) -> str:
    """``repr(value)`` of at most ``limit`` characters, for quoting values read from files or submitted in a
    one-line message: strings, numbers and containers are shortened as they are written (``reprlib``), so a
    huge value is never written out in full."""
    text = _QUOTING.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
