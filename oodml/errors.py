"""The one exception type that reaches users as a one-line message.

Anything raised as :class:`OodmlError` is a problem with the user's input or
environment (a missing file, a malformed annotation, a wrong name).  The CLI
prints its message on one line and exits with status 2; library callers catch
it like any other exception.  Bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


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


def brief(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting values read from files (they can be any length)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
