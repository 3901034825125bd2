"""Progress bars for anything that takes more than a couple of seconds.

One switch turns them all off: ``set_quiet(True)`` (the CLI's ``--quiet``) or
the environment variable ``OODML_QUIET=1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_quiet: bool | None = None


def set_quiet(quiet: bool) -> None:
    """Turn progress bars off (``True``) or back on (``False``) for this process."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    if _quiet is not None:
        return _quiet
    return os.environ.get("OODML_QUIET", "") not in ("", "0")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr unless progress is turned off."""
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=is_quiet(),
                     leave=False, dynamic_ncols=True))


def counter(desc: str, unit: str = "step") -> tqdm:
    """An open-ended bar (no total) for loops whose length is unknown; ``update()`` and ``set_postfix_str()`` it."""
    return tqdm(desc=desc, unit=unit, disable=is_quiet(), leave=False, dynamic_ncols=True)
