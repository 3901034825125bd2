"""Pretrained weight files: where they are cached, and fetching them once, hash-checked, as torchvision does.

A weight file lives where torchvision keeps its own,
``<torch hub dir>/checkpoints/<file>`` (``$TORCH_HOME/hub``, by default
``~/.cache/torch/hub``), so a file either of them downloaded serves both.  Its
name follows torchvision's rule, ``<name>-<sha256 prefix>.<ext>``: the prefix is
the published hash, and a download whose sha256 does not start with it is refused.

A missing file is downloaded by :func:`oodml.download.download_file`: a progress
bar on stderr (off with ``--quiet`` or ``OODML_QUIET=1``), connecting and every
read bounded by ``$OODML_DOWNLOAD_TIMEOUT`` seconds (default 60), the bytes
written to ``<file>.<random>.partial`` beside the destination and renamed onto
it only once complete and verified; on any failure (hash mismatch, a stalled
server and Ctrl-C included) the partial file is removed, so the cache holds the
verified file or nothing.  The offline message comes only after that attempt fails.

The files come from torchvision's server, ``https://download.pytorch.org/models/``,
unless ``$OODML_WEIGHTS_URL`` names a mirror holding the same file names (for
clusters whose nodes reach an internal mirror but not the internet); the hash in
the name is checked all the same, so a mirror cannot substitute other weights.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from .download import DownloadRequest, download_file
from .errors import OodmlError
from .progress import is_quiet

TORCHVISION_URL = "https://download.pytorch.org/models/"
URL_ENV = "OODML_WEIGHTS_URL"

RESNET50_FILE = "resnet50-0676ba61.pth"  # torchvision's ResNet50_Weights.IMAGENET1K_V1


def weights_url(file_name: str, base_url: str | None = None) -> str:
    """The URL of ``file_name`` under ``base_url``, else ``$OODML_WEIGHTS_URL``, else torchvision's server."""
    base = base_url or os.environ.get(URL_ENV) or TORCHVISION_URL
    return f"{base.rstrip('/')}/{file_name}"


def cached_weights_path(file_name: str) -> Path:
    """Where ``file_name`` lives once downloaded: ``<torch hub dir>/checkpoints/<file_name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def published_hash_prefix(file_name: str) -> str:
    """The sha256 prefix in a torchvision-style name: ``"resnet50-0676ba61.pth"`` -> ``"0676ba61"``.

    Raises:
        ValueError: the name carries no prefix of at least 8 hex digits (a programming error: every
            registered weight file must carry one, or its download could not be verified).
    """
    match = torch.hub.HASH_REGEX.search(file_name)
    if match is None or len(match.group(1)) < 8:
        raise ValueError(f"weight file name {file_name!r} carries no sha256 prefix ('<name>-<8+ hex digits>.<ext>')")
    return match.group(1)


#: how to name a weights file already on disk, on every command that can build resnet50
_LOCAL_COPY = "name a local copy (--weights PATH for train and make-splits, 'resnet50?weights=PATH' as a model)"


def fetch_weights(file_name: str, *, owner: str, base_url: str | None = None) -> Path:
    """The verified local copy of a published weight file, downloaded into the torch hub cache if absent.

    Args:
        file_name: a torchvision-style name carrying its sha256 prefix, e.g. ``RESNET50_FILE``.
        owner: who needs the file (``"resnet50"``), to start error messages.
        base_url: the folder URL to fetch from; default ``$OODML_WEIGHTS_URL``, else torchvision's server.

    Returns:
        ``cached_weights_path(file_name)``, present.  A file already there is used as it is (as torchvision does).

    Raises:
        OodmlError: the download failed or waited ``$OODML_DOWNLOAD_TIMEOUT`` seconds in vain (the message
            names the URL, the path to put the file at by hand, and how to name a local copy), its sha256 does not
            match the name, or the cache cannot be written.
    """
    path = cached_weights_path(file_name)
    if path.is_file():
        return path
    url, expected = weights_url(file_name, base_url), published_hash_prefix(file_name)
    if not is_quiet():
        print(f"{owner}: downloading {url} to {path}", file=sys.stderr)
    return download_file(DownloadRequest(
        url, path, algorithm="sha256", expected=expected, who=owner,
        by_hand=f"fetch it on a machine that can and put it at {path}, or {_LOCAL_COPY}",
        unwritable=f"set TORCH_HOME to a writable folder, or {_LOCAL_COPY}", desc=f"download {file_name}"))


def resnet50_weights_path(weights: str | None, *, base_url: str | None = None) -> Path:
    """The ResNet-50 ImageNet weights to load: ``weights`` if given (never downloaded), else the torch hub cache's
    copy of torchvision's IMAGENET1K_V1 file, downloaded once if absent (:func:`fetch_weights`).

    Raises:
        OodmlError: ``weights`` is not a file, or the download failed.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise OodmlError(f"resnet50: weights file {path} does not exist")
        return path
    return fetch_weights(RESNET50_FILE, owner="resnet50", base_url=base_url)
