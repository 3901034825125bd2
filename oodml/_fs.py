"""Filesystem helpers shared by every writer: the cache home, atomic writes, claims that keep a
destination to one writer at a time, destinations checked before any work, and paths that must stay
inside a root."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from .errors import OodmlError

try:
    import fcntl
except ImportError:  # Windows: an O_EXCL lock file instead, which a killed writer leaves behind
    fcntl = None


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


# --- claims: one writer per destination ------------------------------------------------------------

_HELD: dict[Path, int] = {}  # lock file -> how many nested claims this process holds on it


def lock_path(dest: str | os.PathLike) -> Path:
    """The lock file of a claim on ``dest``: ``.<name>.lock`` beside it (hidden, never an entry or a run)."""
    dest = Path(os.path.abspath(dest))
    return dest.with_name(f".{dest.name}.lock")


@contextlib.contextmanager
def claim(dest: str | os.PathLike, *, what: str, fix: str, tidy: bool = True) -> Iterator[Path]:
    """Hold ``dest`` (a file or folder, existing or not) for this process alone while the block runs.

    Every writer that claims a destination before checking and writing it is refused while another
    holds it, so two runs never both report writing the same result.  The claim is an exclusive
    ``flock`` on :func:`lock_path`, which the kernel releases when the holder dies, even by SIGKILL,
    so a killed run never blocks the next (without ``fcntl``: a lock file created with ``O_EXCL``,
    which a killed run leaves behind).  Claims nest within one process.

    Args:
        what: ``dest`` as the user named it, for the error (``"--out results"``).
        fix: what to do instead of waiting (``"choose another --out"``).
        tidy: on taking the claim, tidy what a killed writer of ``dest`` left beside it
            (:func:`remove_leftovers`).

    Yields:
        ``dest`` as an absolute path.

    Raises:
        OodmlError: another process holds the claim; or the lock file cannot be made.
    """
    dest = Path(os.path.abspath(dest))
    lock = lock_path(dest)
    if lock in _HELD:
        _HELD[lock] += 1
        try:
            yield dest
        finally:
            _HELD[lock] -= 1
        return
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = _take_lock(lock)
    except OSError as exc:
        raise OodmlError(f"{what}: cannot create the lock file {lock} ({exc.strerror or exc}); {fix}") from None
    if fd is None:
        stale = "" if fcntl else f"; if it no longer runs, delete {lock}"
        raise OodmlError(f"{what} is being written by another process ({_holder(lock)}); wait for it to "
                         f"finish or {fix}{stale}")
    _HELD[lock] = 1
    try:
        if tidy:
            remove_leftovers(dest)
        yield dest
    finally:
        del _HELD[lock]
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still locked: a waiting process then finds the file gone and retries
        os.close(fd)


def _take_lock(lock: Path) -> int | None:
    """An open descriptor holding ``lock`` exclusively, or None when another process holds it."""
    for _ in range(100):
        if fcntl is None:
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return None
        else:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return None
            if not _same_file(fd, lock):  # the holder released and unlinked it after we opened it
                os.close(fd)
                continue
        os.ftruncate(fd, 0)
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {now}\n".encode())
        return fd
    raise OodmlError(f"cannot take the lock {lock}: it is replaced faster than it can be held")


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder(lock: Path) -> str:
    """Who holds ``lock``, as its holder wrote it (``pid 12 on host, since ...``)."""
    try:
        text = lock.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text[:120] if text else "it has not said which"


def _leftover_pattern(name: str) -> re.Pattern:
    """Names :func:`atomic_path` gives its temporaries for ``name``: ``.<name>.<8 random>.tmp`` (the
    staging folder) and ``.<name>.<pid>.old`` (the folder being replaced); no other name's match."""
    return re.compile(rf"\.{re.escape(name)}\.(?:[a-z0-9_]{{8}}\.tmp|[0-9]+\.old)")


def remove_leftovers(dest: str | os.PathLike) -> list[Path]:
    """Tidy what writers of ``dest`` killed inside :func:`atomic_path` left beside it: staging
    temporaries are removed; a replaced folder (``.old``) is put back when ``dest`` itself is missing
    (the writer died between the two renames), else removed.  Call it only while holding a
    :func:`claim` on ``dest``: a live writer's temporaries look the same.

    Returns:
        The paths removed or put back.
    """
    dest = Path(os.path.abspath(dest))
    pattern = _leftover_pattern(dest.name)
    found = sorted(p for p in dest.parent.iterdir() if pattern.fullmatch(p.name)) if dest.parent.is_dir() else []
    for path in found:
        if path.suffix == ".old" and not dest.exists():
            os.replace(path, dest)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def remove_abandoned(directory: str | os.PathLike) -> list[Path]:
    """Tidy the leftovers (:func:`remove_leftovers`) of every destination in ``directory`` that no live
    process claims, and the lock files of killed writers.  Only for folders whose writers all claim
    their destinations (leaderboard entries), as a live unclaimed writer's temporaries would go too.

    Returns:
        The paths removed or put back.
    """
    directory = Path(directory)
    names = set()
    for path in directory.iterdir() if directory.is_dir() else []:
        match = re.fullmatch(r"\.(.+)\.(?:[a-z0-9_]{8}\.tmp|[0-9]+\.old|lock)", path.name)
        if match:
            names.add(match.group(1))
    tidied = []
    for name in sorted(names):
        try:
            with claim(directory / name, what=name, fix="retry later", tidy=False) as dest:
                tidied += remove_leftovers(dest)
        except OodmlError:  # a live writer: its temporaries are its own
            continue
    return tidied


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
