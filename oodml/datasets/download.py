"""Fetch a dataset's official archives, check their published md5, and unpack them safely."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from .._fs import atomic_path, file_digest
from ..errors import OodmlError, first_line
from ..progress import progress
from .registry import Download, dataset_spec

CHUNK = 1 << 20


def md5_of(path: Path) -> str:
    return file_digest(path, "md5")


def _fetch(item: Download, dest: Path, *, dataset: str, root: Path, layout: str, timeout: float) -> None:
    """Download ``item.url`` to ``dest`` with a progress bar and verify its md5.

    The bytes go to a temporary beside ``dest`` that is renamed onto it only when complete and verified, so on
    any failure (offline, dropped transfer, md5 mismatch, interrupt) nothing is left at or beside ``dest``.
    """
    by_hand = (f"fetch it elsewhere and put it at {dest} (then run this again), or unpack it into {root} so that "
               f"it holds {layout}")
    try:
        response = urllib.request.urlopen(item.url, timeout=timeout)  # noqa: S310 (fixed, registered URLs)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise OodmlError(f"{dataset}: cannot download {item.url} ({_reason(exc)}); if this machine is offline, "
                         f"{by_hand}") from None
    total = int(response.headers.get("Content-Length") or 0) or None
    md5, received = hashlib.md5(), 0
    with response, atomic_path(dest) as tmp, open(tmp, "wb") as out:
        try:
            for block in progress(iter(lambda: response.read(CHUNK), b""), f"download {item.filename}",
                                  total=total and -(-total // CHUNK), unit="MiB"):
                out.write(block)
                md5.update(block)
                received += len(block)
        except (OSError, http.client.HTTPException) as exc:
            raise OodmlError(f"{dataset}: the download of {item.url} broke off after {received:,} bytes "
                             f"({_reason(exc)}); try again, or {by_hand}") from None
        if total is not None and received != total:
            # urllib returns end-of-file, not an error, when the server closes a fixed-length response early.
            raise OodmlError(f"{dataset}: the download of {item.url} stopped after {received:,} of {total:,} bytes "
                             f"and was discarded; try again, or {by_hand}")
        if md5.hexdigest() != item.md5:
            raise OodmlError(f"{dataset}: {item.url} has md5 {md5.hexdigest()}, expected {item.md5}; the download "
                             "is corrupt or the file changed upstream, so it was discarded")


def _reason(exc: BaseException) -> str:
    """Why a request failed, in a few words: ``HTTP 404 Not Found``, ``[Errno 111] Connection refused``."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", exc)
    return first_line(reason) if isinstance(reason, BaseException) else str(reason)


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


def download_dataset(name: str, root: str | Path, *, timeout: float = 30.0) -> Path:
    """Download, verify (md5) and unpack the official archives of ``name`` into ``root``.

    Archives already present with the right checksum are not fetched again.
    Returns ``root``.

    Raises:
        OodmlError: no official download, unreachable URL (offline), checksum mismatch, bad archive.
    """
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

