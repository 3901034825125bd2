"""A selection of levels (``--levels all``, ``1,3,5``, ``2-4``, ``1,3-5``), read and checked against a split set.

Used by every command that takes ``--levels`` or ``--level`` (evaluate, train) and by :func:`oodml.evaluate`'s
``levels``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import OodmlError

if TYPE_CHECKING:
    from .manifest import SplitSet

_LEVEL_PART = re.compile(r"\s*([0-9]{1,9})\s*(?:-\s*([0-9]{1,9})\s*)?")


def level_ranges(text: str) -> list[tuple[int, int]] | None:
    """Read a level selection without expanding it, so that ``1-20000000`` costs nothing.

    Returns:
        None for ``all``; else inclusive ``(first, last)`` ranges: ``1,3-5`` -> ``[(1, 1), (3, 5)]``.

    Raises:
        ValueError: for a reversed range (``3-1``) or anything else; the message says what to write.
    """
    if text.strip() == "all":
        return None
    ranges = []
    for part in text.split(","):
        m = _LEVEL_PART.fullmatch(part)
        if not m:
            raise ValueError("use all, a list like 1,3,5 or a range like 2-4")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last < first:
            raise ValueError(f"the range {first}-{last} runs backwards; write {last}-{first}")
        ranges.append((first, last))
    return ranges


def parse_levels(text: str, split_set: SplitSet, option: str = "--levels") -> list[int] | None:
    """A level selection (``--levels``) as level numbers of ``split_set``.

    Returns:
        None for ``all``; else the levels of ``1,3,5``, ``2-4`` or ``1,3-5``, in the order given, each once.

    Raises:
        OodmlError: bad syntax, a reversed range, or a level ``split_set`` does not have (naming those it has).
    """
    try:
        ranges = level_ranges(text)
    except ValueError as exc:
        raise OodmlError(f"{option} {text!r}: {exc}") from None
    if ranges is None:
        return None
    available = sorted(lv.index for lv in split_set.levels)
    chosen: list[int] = []
    for first, last in ranges:
        for end in (first, last):
            if end not in available:
                span = f"{available[0]}-{available[-1]}" if available == list(range(available[0], available[-1] + 1)) \
                    else ",".join(map(str, available))
                raise OodmlError(f"{option} {text!r}: {split_set.dataset}@{split_set.version} has no level {end}; "
                                 f"its levels are {span}")
        chosen += [k for k in available if first <= k <= last]
    return list(dict.fromkeys(chosen))
