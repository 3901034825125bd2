"""The one exception type that reaches users as a one-line message.

Anything raised as :class:`OodmlError` is a problem with the user's input or
environment (a missing file, a malformed annotation, a wrong name).  The CLI
prints its message on one line and exits with status 2; library callers catch
it like any other exception.  Bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations

import math
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


class _Quoting(reprlib.Repr):
    """A ``repr`` that cuts long strings, huge numbers and deep or long containers."""

    def __init__(self) -> None:
        super().__init__()  # Python 3.11 takes no keyword arguments here
        self.maxstring = self.maxlong = self.maxother = 40
        self.maxlevel, self.maxlist, self.maxdict = 2, 4, 4

    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:  # more digits than Python converts to text (sys.get_int_max_str_digits())
            return f"<an integer of about {int(x.bit_length() * math.log10(2)) + 1} digits>"


_QUOTING = _Quoting()


def brief(value: object, limit: int = 60) -> str:
    """``repr(value)`` of at most ``limit`` characters, for quoting values read from files or submitted in a
    one-line message: strings, numbers and containers are shortened as they are written (``reprlib``), so a
    huge value is never written out in full."""
    text = _QUOTING.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
