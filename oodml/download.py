"""Fetching one file over HTTP(S), bounded in time, hash-checked, written atomically: the one download routine.

Used for pretrained weights (:mod:`oodml.weights`) and dataset archives
(:mod:`oodml.datasets.download`).  :func:`download_file` streams the response to a
:class:`DownloadRequest` in blocks, hashing as it goes, into ``<dest>.<random>.partial`` beside the
destination, and renames it onto ``dest`` only once every announced byte has
arrived and the digest matches.  On any failure (refused connection, HTTP error,
a server that stops sending, a dropped or corrupt transfer, a full disk, Ctrl-C)
the partial file is removed, so the destination folder holds the verified file
or nothing.  (Only a process killed outright, e.g. by SIGKILL, can leave a
``.partial`` behind; nothing reads those, and the next download writes its own.)

Every wait is bounded: connecting, and each read of the response, give up after
``$OODML_DOWNLOAD_TIMEOUT`` seconds (default 60) without progress.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import OodmlError, brief, first_line
from .progress import stage

TIMEOUT_ENV = "OODML_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds without progress before a connection or a read gives up
SCHEMES = ("http", "https", "file")
BLOCK = 1 << 20  # bytes per read at most; a read returns what has arrived


def download_timeout() -> float:
    """Seconds a download may wait to connect or for its next bytes: ``$OODML_DOWNLOAD_TIMEOUT``, else 60.

    Raises:
        OodmlError: the variable is set to something other than a positive, finite number.
    """
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise OodmlError(f"{TIMEOUT_ENV} must be a positive number of seconds (default {DEFAULT_TIMEOUT:g}), got "
                         f"{brief(os.environ[TIMEOUT_ENV])}; set it to e.g. 120, or unset it")
    return seconds


@dataclass(frozen=True)
class DownloadRequest:
    """One file to fetch: where from and to, the digest it must have, and how its messages read.

    Attributes:
        url: an ``http``, ``https`` or ``file`` URL.
        dest: the file to create; its folder is created if needed.  An existing file is replaced only by a
            verified download.
        algorithm, expected: ``"md5"`` and a full digest, or ``"sha256"`` and torchvision's published prefix:
            the file's ``algorithm`` digest (a ``hashlib`` name) must start with ``expected``.
        who: what needs the file (``"resnet50"``, ``"cub200"``), starting every message.
        by_hand: how to get the file otherwise, ending the messages about the transfer
            (``"put it at <path>, or pass --weights PATH"``).
        unwritable: what to do when ``dest`` cannot be written (``"set TORCH_HOME to a writable folder"``).
        desc: the progress bar's label (default ``download <file name>``); no bar under ``--quiet``.
    """

    url: str
    dest: Path
    algorithm: str
    expected: str
    who: str
    by_hand: str
    unwritable: str
    desc: str | None = None


def download_file(request: DownloadRequest, *, timeout: float | None = None) -> Path:
    """Fetch ``request.url`` to ``request.dest``, verified against ``request.expected``.

    Args:
        request: what to fetch, where to, its digest, and the words of its messages.
        timeout: seconds to wait to connect and for each read; default :func:`download_timeout`.

    Returns:
        ``request.dest``, complete and verified.

    Raises:
        OodmlError: one line naming the URL for a bad scheme, an unreachable server, an HTTP error, a
            connection or read that waited ``$OODML_DOWNLOAD_TIMEOUT`` seconds in vain, a transfer that broke
            off or stopped short, a digest mismatch, or an unwritable destination; a bad timeout value.
    """
    timeout = download_timeout() if timeout is None else timeout
    url, dest, who = request.url, request.dest, request.who
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise OodmlError(f"{who}: cannot download {brief(url)}: {'no' if not scheme else brief(scheme)} URL scheme;"
                         f" use one of {', '.join(s + '://' for s in SCHEMES)}")
    response = _open(request, timeout)
    partial = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        with response:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                out = open(partial, "xb")  # noqa: SIM115 (closed below, before the rename)
            except OSError as exc:
                raise _unwritable(exc, request) from None
            with out:
                digest = _stream(response, out, request, timeout)
        if not digest.startswith(request.expected):
            raise OodmlError(f"{who}: the file downloaded from {url} failed its {request.algorithm} check (expected "
                             f"{request.expected}{'...' if len(request.expected) < len(digest) else ''}, got "
                             f"{digest}) and was discarded; the transfer was corrupted or the server holds another "
                             f"file. Try again, or {request.by_hand}")
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)  # after a failure of any kind, Ctrl-C included; a no-op after the rename
    return dest


def _open(request: DownloadRequest, timeout: float):
    """The open response for ``request.url``, connecting within ``timeout`` seconds; a one-line OodmlError if not."""
    url, who, by_hand = request.url, request.who, request.by_hand
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (scheme checked by the caller)
    except urllib.error.HTTPError as exc:  # the server answered: not a matter of being offline
        raise OodmlError(f"{who}: cannot download {url} (HTTP {exc.code} {exc.reason}); {by_hand}") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        if _timed_out(exc):
            raise OodmlError(f"{who}: cannot download {url} (no answer within {timeout:g} s, the limit "
                             f"{TIMEOUT_ENV} sets); try again, raise {TIMEOUT_ENV}, or {by_hand}") from None
        raise OodmlError(f"{who}: cannot download {url} ({_reason(exc)}); if this machine is offline, "
                         f"{by_hand}") from None


def _stream(response, out, request: DownloadRequest, timeout: float) -> str:
    """Copy ``response`` into the open file ``out`` with a progress bar; the hex digest (``request.algorithm``)
    of what was copied.

    Raises:
        OodmlError: a read waited ``timeout`` seconds in vain or failed, fewer bytes came than the response's
            ``Content-Length`` announced, or ``out`` could not be written.
    """
    url, who, by_hand = request.url, request.who, request.by_hand
    total = int(response.headers.get("Content-Length") or 0) or None
    digest, received = hashlib.new(request.algorithm), 0
    read = getattr(response, "read1", response.read)  # what has arrived, so the count is exact when a read fails
    desc = request.desc or f"download {request.dest.name}"
    with stage(desc, total, unit="B", unit_scale=True, unit_divisor=1024) as bar:
        while True:
            try:
                block = read(BLOCK)
            except (OSError, http.client.HTTPException) as exc:
                if _timed_out(exc):
                    raise OodmlError(f"{who}: the download of {url} stalled after {received:,} bytes (nothing for "
                                     f"{timeout:g} s, the limit {TIMEOUT_ENV} sets) and was discarded; try again, "
                                     f"raise {TIMEOUT_ENV}, or {by_hand}") from None
                raise OodmlError(f"{who}: the download of {url} broke off after {received:,} bytes ({_reason(exc)}) "
                                 f"and was discarded; try again, or {by_hand}") from None
            if not block:
                break
            try:
                out.write(block)
            except OSError as exc:
                raise _unwritable(exc, request) from None
            digest.update(block)
            received += len(block)
            bar.update(len(block))
    if total is not None and received != total:
        # urllib returns end-of-file, not an error, when the server closes a fixed-length response early.
        raise OodmlError(f"{who}: the download of {url} stopped after {received:,} of {total:,} bytes and was "
                         f"discarded; try again, or {by_hand}")
    return digest.hexdigest()


def _unwritable(exc: OSError, request: DownloadRequest) -> OodmlError:
    reason = exc.strerror or first_line(exc)
    return OodmlError(f"{request.who}: cannot save {request.url} to {request.dest} ({reason}); {request.unwritable}")


def _timed_out(exc: BaseException) -> bool:
    """Whether a urllib failure is a socket timeout (raised as is, or wrapped in a ``URLError``)."""
    return isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)


def _reason(exc: BaseException) -> str:
    """Why a request failed, in a few words: ``[Errno 111] Connection refused``, ``unknown url type: 'x'``."""
    reason = getattr(exc, "reason", exc)
    return first_line(reason) if isinstance(reason, BaseException) else str(reason)
