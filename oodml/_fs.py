"""Filesystem helpers shared by every writer: the cache home, atomic writes,
destinations checked before any work, and paths that must stay inside a root."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from .errors import OodmlError


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``hashlib`` algorithm name), read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` (made absolute) if it exists, else the closest folder above it that does."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, *, option: str = "--out") -> None:
    """Refuse, before any work, a destination folder this process could not write.

    ``path`` must be a folder or not exist yet, and the folder that would
    receive new entries (``path`` itself, else the nearest existing folder
    above it) must accept them.  That is probed by creating and removing an
    empty temporary folder, which also catches read-only mounts and rules that
    permission bits do not show (and root's bypass of them).

    Raises:
        OodmlError: naming ``option``, the path, the reason and how to fix it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OodmlError(f"{option} {path} is a file, not a folder; give a folder path (new or existing)")
    folder = nearest_existing(path)
    if not folder.is_dir():
        raise OodmlError(f"{option} {path}: {folder} is a file, so no folder can be made under it; "
                         f"choose another {option}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".oodml-write-test-", dir=folder))
    except OSError as exc:
        raise OodmlError(f"{option} {path}: cannot write into {folder} ({exc.strerror or exc}); "
                         f"choose another {option} or make {folder} writable") from None


def escaping_link(root: str | os.PathLike, rel_paths: Iterable[str]) -> tuple[Path, Path] | None:
    """Find a symbolic link that takes a sample path out of its root.

    Args:
        root: the folder the paths are relative to.
        rel_paths: relative sample paths (POSIX separators, no ``..``: see :func:`safe_relative`).

    Returns:
        ``(link, target)`` for the first path that leaves ``root`` once links
        are followed: ``link`` is the file itself or the first folder on the
        way to it that is such a link, ``target`` the real location it leads
        to.  None when every path stays inside ``root`` (links within it are fine).

    Each folder is resolved and listed once (the listing says which entries
    are links, without a ``stat`` per file), so SOP's 120,000 files take about
    0.05 s.  Missing files and folders are skipped: the dataset's fingerprint
    names them.
    """
    root = os.path.abspath(root)
    real_root = os.path.realpath(root)

    def outside(real: str) -> bool:
        return os.path.commonpath([real, real_root]) != real_root

    escapes: dict[str, tuple[Path, Path] | None] = {}  # relative folder -> the link taking it out, if any
    links: dict[str, set[str]] = {}                     # relative folder -> names of the links in it
    for rel in rel_paths:
        folder, _, name = rel.rpartition("/")
        if folder not in escapes:
            escapes[folder], links[folder] = _folder_links(root, folder, outside)
        if escapes[folder] is not None:
            return escapes[folder]
        if name in links[folder]:
            target = os.path.realpath(os.path.join(root, rel))
            if outside(target):
                return Path(root, rel), Path(target)
    return None


def _folder_links(root: str, folder: str,
                  outside: Callable[[str], bool]) -> tuple[tuple[Path, Path] | None, set[str]]:
    """For :func:`escaping_link`: the first step of ``root/folder`` that a link takes ``outside`` (with where it
    leads), and the names of the links directly in that folder."""
    escape = None
    if outside(os.path.realpath(os.path.join(root, folder))):
        step = root
        for part in folder.split("/"):
            step = os.path.join(step, part)
            if outside(os.path.realpath(step)):
                escape = (Path(step), Path(os.path.realpath(step)))
                break
    try:
        with os.scandir(os.path.join(root, folder)) as entries:
            return escape, {e.name for e in entries if e.is_symlink()}
    except OSError:
        return escape, set()


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
