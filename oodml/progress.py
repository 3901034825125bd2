"""Progress of anything that takes more than a couple of seconds, one stage at a time.

On a terminal (or in a Jupyter kernel) a stage is a tqdm bar on stderr that goes when the stage ends.  Anywhere
else (a pipe, a file, a CI log) nothing is drawn while it runs, so no carriage returns pile up, and one line
is written to stderr when it ends: ``"<desc>: <n> <unit> in <t> s"`` (a stage that fails writes none; its
error says enough).  One switch turns both off: ``set_quiet(True)`` (the CLI's ``--quiet``) or the
environment variable ``OODML_QUIET=1``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
_quiet: bool | None = None


def set_quiet(quiet: bool) -> None:
    """Turn progress output off (``True``) or back on (``False``) for this process."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    if _quiet is not None:
        return _quiet
    return os.environ.get("OODML_QUIET", "") not in ("", "0")


def draws_bars() -> bool:
    """Whether progress is drawn as bars: stderr is a terminal, or this runs in a Jupyter kernel (whose
    stderr is no terminal, but which tqdm draws widgets in)."""
    try:
        terminal = sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        terminal = False
    return terminal or "ipykernel" in sys.modules


def stage_line(desc: str, count: int | str, unit: str, seconds: float, note: str = "") -> str:
    """The line a finished stage leaves off a terminal, e.g. ``"embed: 2048 img in 3.2 s"``; ``note`` (the
    bar's last postfix) follows in parentheses."""
    return f"{desc}: {count} {unit} in {seconds:.1f} s" + (f" ({note})" if note else "")


class Stage:
    """One stage, advanced with :meth:`update`, ended with :meth:`close` (its line) or :meth:`abandon` (none).

    Args:
        desc: what the stage does, e.g. ``"features resnet50"``.
        total: how many units it will count, if known.
        unit: what it counts, e.g. ``"img"``.
        bar_options: more tqdm options for the bar (``unit_scale=True`` for bytes).
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", **bar_options) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.n, self.note, self._start, self._open = 0, "", time.monotonic(), True
        self._quiet, self._options = is_quiet(), bar_options
        self._bar = None
        if not self._quiet and draws_bars():
            from tqdm.auto import tqdm

            self._bar = tqdm(desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, **bar_options)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix_str(self, note: str, refresh: bool = True) -> None:
        """Show ``note`` after the bar (off a terminal, in the stage's line)."""
        self.note = note
        if self._bar is not None:
            self._bar.set_postfix_str(note, refresh=refresh)

    def close(self) -> None:
        """End the stage: the bar goes; off a terminal its one line is written.  Only the first call counts."""
        if self._end() and not self._quiet and self._bar is None:
            count: int | str = self.n
            if self._options.get("unit_scale"):  # as the bar writes it: 4.79k (B), with unit_divisor
                from tqdm import tqdm

                count = tqdm.format_sizeof(self.n, divisor=self._options.get("unit_divisor", 1000))
            print(stage_line(self.desc, count, self.unit, time.monotonic() - self._start, self.note),
                  file=sys.stderr, flush=True)

    def abandon(self) -> None:
        """End the stage without its line (it failed or was left unfinished)."""
        self._end()

    def _end(self) -> bool:
        was_open, self._open = self._open, False
        if was_open and self._bar is not None:
            self._bar.close()
        return was_open


@contextmanager
def stage(desc: str, total: int | None = None, unit: str = "it", *, within: Stage | None = None,
          **bar_options) -> Iterator[Stage]:
    """A :class:`Stage` for a ``with`` block: closed (its line written) when the block completes, abandoned
    when it raises.  ``within``: an enclosing stage to count on instead, which the block neither opens nor
    ends (how ``embed_cached`` shows one bar across its cache shards)."""
    if within is not None:
        yield within
        return
    current = Stage(desc, total, unit, **bar_options)
    try:
        yield current
    except BaseException:
        current.abandon()
        raise
    current.close()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``iterable``'s items, counted on a stage of their own.  The stage is complete, and writes its line, when
    the items run out or when ``total`` items have been taken and the iteration is dropped (a training loop
    that stops after its last step); dropped earlier, it writes none."""
    current = Stage(desc, total, unit)
    finished = False
    try:
        for item in iterable:
            current.update()
            yield item
        finished = True
    finally:
        if finished or (total is not None and current.n >= total):
            current.close()
        else:
            current.abandon()


def counter(desc: str, unit: str = "step") -> Stage:
    """A stage without a known length, for loops that ``update()`` it (and ``set_postfix_str()``) as they go
    and ``close()`` it when done."""
    return Stage(desc, None, unit)
