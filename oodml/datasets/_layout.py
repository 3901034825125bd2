"""Parsing helpers shared by the adapters: finding a layout under a root and
reading whitespace-separated annotation tables with line-numbered errors."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import OodmlError, brief


def find_layout(name: str, root: Path, candidates: Sequence[tuple[str, str]], expected: str) -> tuple[Path, str]:
    """Return ``(base directory, marker)`` for the first candidate present under ``root``.

    Args:
        name: dataset name, for messages.
        root: the directory the user gave.
        candidates: ``(relative directory, marker file or folder inside it)`` pairs,
            tried in order; ``"."`` means ``root`` itself.
        expected: the layout in words, for the error.

    Raises:
        OodmlError: when ``root`` does not exist or no candidate matches.
    """
    if not root.exists():
        raise OodmlError(f"{name}: dataset root {root} does not exist; it should hold {expected}. "
                         "Pass --root DIR (see `oodml datasets download --help` for official archives)")
    if not root.is_dir():
        raise OodmlError(f"{name}: dataset root {root} is not a directory; expected {expected}")
    for rel, marker in candidates:
        base = (root / rel).resolve() if rel != "." else root
        if (base / marker).exists():
            return base, marker
    raise OodmlError(f"{name}: no dataset found under {root}: expected {expected}")


def utf8_name(name: str, folder: Path, dataset: str, what: str) -> str:
    """Return the file or folder ``name`` (an entry of ``folder``) when it is UTF-8 text.

    Class names and sample ids are written into split manifests, caches and results as UTF-8, so a name
    whose bytes are not UTF-8 (which Python reads with surrogate escapes) is refused where it is found,
    not later by whichever writer meets it first.

    Raises:
        OodmlError: naming the entry by its bytes (``b'caf\\xe9'``) and asking to rename it.
    """
    if is_utf8(name):
        return name
    shown = folder if is_utf8(str(folder)) else brief(os.fsencode(folder), 200)
    raise OodmlError(f"{dataset}: the {what} {brief(os.fsencode(name), 80)} in {shown} has a name that is not "
                     "valid UTF-8; rename it to UTF-8 text (class names and sample ids are written to split "
                     "manifests and results as UTF-8)")


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: False for a name read from bytes that are not (surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def require(path: Path, name: str, expected: str) -> Path:
    """Return ``path`` if it exists, else a one-line error naming it and the layout."""
    if not path.exists():
        raise OodmlError(f"{name}: missing {path} (expected {expected})")
    return path


def read_rows(path: Path, ncols: int, name: str, *, header: bool = False) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(location, fields)`` for each non-empty line of a whitespace-separated table.

    Fields are split on whitespace at most ``ncols - 1`` times, so the last field
    may contain spaces (CUB's class names do not, but paths might).  ``location``
    is ``"<path> line <n>"`` for error messages.

    Raises:
        OodmlError: for a line with fewer than ``ncols`` fields or undecodable text.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise OodmlError(f"{name}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.splitlines()
    for n, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=ncols - 1)
        where = f"{path} line {n}"
        if len(fields) < ncols:
            raise OodmlError(f"{name}: {where}: expected {ncols} fields, got {len(fields)}: {line.strip()!r}")
        yield where, fields


def parse_int(text: str, where: str, name: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise OodmlError(f"{name}: {where}: {what} {text!r} is not an integer") from None
