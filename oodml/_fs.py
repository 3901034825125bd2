"""Filesystem helpers shared by every writer: the cache home, atomic writes,
and paths that must stay inside a root."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from .errors import OodmlError


def oodml_home() -> Path:
    """The cache directory: ``$OODML_HOME``, else ``~/.cache/oodml``."""
    return Path(os.environ.get("OODML_HOME") or Path.home() / ".cache" / "oodml")


def data_home() -> Path:
    """Where datasets live when no root is given: ``$OODML_DATA``, else ``<oodml_home>/data``."""
    env = os.environ.get("OODML_DATA")
    return Path(env) if env else oodml_home() / "data"


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` on success.

    Works for a file or a directory.  On any exception the temporary is removed
    and ``dest`` is untouched, so readers never see a half-written result.  An
    existing directory at ``dest`` is replaced only after the new one is complete.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    target = tmp / dest.name
    try:
        yield target
        if dest.is_dir() and target.is_dir():
            old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
            os.replace(dest, old)
            os.replace(target, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(directory: Path, older_than_s: float = 6 * 3600) -> int:
    """Delete what killed writers left behind: :func:`atomic_path` temporaries (``.<name>.*.tmp``)
    in ``directory`` untouched for ``older_than_s`` seconds (a live writer touches its own far sooner).

    Returns how many were removed.
    """
    import time

    removed = 0
    for tmp in directory.glob(".*.tmp") if directory.is_dir() else []:
        try:
            if time.time() - tmp.stat().st_mtime <= older_than_s:
                continue
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed += 1
        except OSError:  # another process removed it first
            continue
    return removed


def safe_relative(rel: str, *, source: str) -> str:
    """Check that an annotation's relative path stays inside its root.

    Args:
        rel: a path as written in an annotation file (POSIX separators).
        source: where it came from, e.g. ``"images.txt line 3"``, for the error.

    Returns:
        The path normalised to POSIX form (``a/./b`` -> ``a/b``).

    Raises:
        OodmlError: for an empty, absolute or ``..``-containing path.
    """
    text = rel.replace("\\", "/")
    path = PurePosixPath(text)
    if not text or path.is_absolute() or ".." in path.parts or (len(text) > 1 and text[1] == ":"):
        raise OodmlError(f"{source}: sample path {rel!r} escapes the dataset root; "
                         "annotation paths must be relative and must not contain '..'")
    return path.as_posix()
