"""Fetch a dataset's official archives, check their published md5, and unpack them safely."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from .._fs import file_digest
from ..download import DownloadRequest, download_file, download_timeout
from ..errors import OodmlError
from .registry import Download, dataset_spec


def md5_of(path: Path) -> str:
    return file_digest(path, "md5")


def _fetch(item: Download, dest: Path, *, dataset: str, root: Path, layout: str, timeout: float) -> None:
    """Download ``item.url`` to ``dest`` with a progress bar and verify its md5 (:func:`oodml.download.download_file`:
    bounded waits, and on any failure nothing is left at or beside ``dest``)."""
    download_file(DownloadRequest(
        item.url, dest, algorithm="md5", expected=item.md5, who=dataset,
        by_hand=f"fetch it elsewhere and put it at {dest} (then run this again), or unpack it into {root} so that "
                f"it holds {layout}",
        unwritable=f"make {root} writable or choose another --root", desc=f"download {item.filename}"),
        timeout=timeout)


def _check_member(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise OodmlError(f"refusing to extract {archive}: member {name!r} would land outside the dataset root")


def extract(archive: Path, into: Path) -> None:
    """Unpack a tar (any compression) or zip archive into ``into``, refusing members that escape it.

    The archive is unpacked into a temporary folder first and its top-level
    entries are then renamed into place, so a failure leaves nothing half-extracted.
    """
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=into))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    _check_member(name, archive)
                z.extractall(staging)
        else:
            with tarfile.open(archive) as t:
                for member in t.getmembers():
                    _check_member(member.name, archive)
                t.extractall(staging, filter="data")
        for entry in staging.iterdir():
            target = into / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise OodmlError(f"cannot unpack {archive}: {exc} (not a valid, complete tar or zip archive)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_dataset(name: str, root: str | Path, *, timeout: float | None = None) -> Path:
    """Download, verify (md5) and unpack the official archives of ``name`` into ``root``.

    Archives already present with the right checksum are not fetched again.
    Connecting and each read wait at most ``timeout`` seconds (default ``$OODML_DOWNLOAD_TIMEOUT``, else 60).
    Returns ``root``.

    Raises:
        OodmlError: no official download, a bad ``$OODML_DOWNLOAD_TIMEOUT``, unreachable URL (offline),
            a stalled or dropped transfer, checksum mismatch, bad archive.
    """
    timeout = download_timeout() if timeout is None else timeout  # a bad value is refused before any work
    spec = dataset_spec(name)
    if not spec.downloads:
        raise OodmlError(f"{name}: has no official download; it expects {spec.layout}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for item in spec.downloads:
        dest = root / item.filename
        if not (dest.exists() and md5_of(dest) == item.md5):
            _fetch(item, dest, dataset=name, root=root, layout=spec.layout, timeout=timeout)
        if item.extract:
            extract(dest, root)
    return root

