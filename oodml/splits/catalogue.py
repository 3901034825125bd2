"""The catalogue of published split sets: where each ``dataset@version`` is found, and loading one by name.

Split sets are looked for on the search paths (:mod:`oodml.splits.locations`:
``$OODML_SPLITS``, the project's ``splits/``, the installed copies).  A
published name is immutable: it has one digest wherever it is found, and a name
two places hold with different digests is refused, naming both places and
which to keep.  The format of one split set, and its verification, is
:mod:`oodml.splits.manifest`; publishing a new one, :mod:`oodml.splits.publish`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import OodmlError
from .locations import CHECKSUMS, SplitLocation, search_paths, split_locations
from .manifest import SplitSet, read_checksums, read_split_set


@dataclass(frozen=True)
class PublishedSplitSet:
    """Where one published split set was found: ``dataset@version`` at ``path``, from ``location``."""

    dataset: str
    version: str
    path: Path
    location: SplitLocation


def _all_copies(dataset: str | None = None) -> list[PublishedSplitSet]:
    """Every split set directory on the search paths (only ``dataset``'s when given), in search order; a
    ``dataset@version`` found in several places is listed once per place."""
    found = []
    for location in split_locations():
        base = location.path
        for ds_dir in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
            if dataset is not None and ds_dir.name != dataset:
                continue
            for v_dir in sorted(p for p in ds_dir.iterdir() if (p / CHECKSUMS).exists()):
                found.append(PublishedSplitSet(ds_dir.name, v_dir.name, v_dir, location))
    return found


def published_split_sets(dataset: str | None = None) -> list[PublishedSplitSet]:
    """Every published split set on the search paths (only ``dataset``'s when given); a ``dataset@version``
    found in several places is listed once, from the earliest location (:func:`load` refuses the name when
    the places hold different content)."""
    found: dict[tuple[str, str], PublishedSplitSet] = {}
    for published in _all_copies(dataset):
        found.setdefault((published.dataset, published.version), published)
    return list(found.values())


def split_set_copies(dataset: str, version: str) -> list[PublishedSplitSet]:
    """Every copy of ``dataset@version`` on the search paths, in search order (usually one or none)."""
    return [p for p in _all_copies(dataset) if p.version == version]


def _conflict(name: str, first: PublishedSplitSet, digest: str, other: PublishedSplitSet, other_digest: str) -> str:
    """The one-line refusal of a name that two places hold with different digests."""
    where = {p.location.source: p.path for p in (first, other)}
    keep = "installed" if "installed" in where else "project" if "project" in where else None
    drop = next(p.path for p in (first, other) if p.location.source != keep) if keep else None
    fix = (f"keep the {keep} one and delete {drop}, or remake that one with another --version" if keep else
           "delete the one that is not the published set, or remake it with another --version")
    return (f"{name} has two different contents on the split-set search path: digest {digest[:12]} at "
            f"{first.path} ({first.location.source}) and {other_digest[:12]} at {other.path} "
            f"({other.location.source}); a published name is immutable: {fix}")


def one_content(copies: Sequence[PublishedSplitSet]) -> PublishedSplitSet:
    """The first of ``copies`` (places holding one ``dataset@version``), after checking that they all record
    the same digest.

    Raises:
        OodmlError: one line naming two places whose digests differ, or a copy whose checksums cannot be read.
    """
    digests = [read_checksums(p.path, f"split set {p.path}")["digest"] for p in copies]
    for other, digest in zip(copies[1:], digests[1:], strict=True):
        if digest != digests[0]:
            name = f"{copies[0].dataset}@{copies[0].version}"
            raise OodmlError(_conflict(name, copies[0], digests[0], other, digest))
    return copies[0]


def iter_published(dataset: str | None = None) -> Iterator[tuple[str, str, Path]]:
    """``(dataset, version, path)`` of every published split set found on the search paths."""
    for published in published_split_sets(dataset):
        yield published.dataset, published.version, published.path


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _created(published: PublishedSplitSet) -> tuple:
    """Sort key of "latest": ``created_at`` of the metadata (empty when unreadable), then the version name."""
    try:
        metadata = json.loads((published.path / "metadata.json").read_text())
        stamp = metadata.get("created_at", "") if isinstance(metadata, dict) else ""
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        stamp = ""
    return str(stamp), _natural_key(published.version)


def load(dataset: str, version: str | None = None, *,
         read: Callable[[Path], SplitSet] = read_split_set) -> SplitSet:
    """Load and verify a published split set (the latest version when ``version`` is None).

    "Latest" is the most recently created (``created_at`` in the metadata),
    ties broken by natural order of the version names.  A name held in
    several places on the search paths must have one digest in all of them
    (published names are immutable), else it is refused naming two places.
    ``read`` reads and verifies the chosen directory (the leaderboard's
    verifier passes one that keeps what it read while the files are unchanged).
    """
    found = published_split_sets(dataset)
    if version is not None and not any(p.version == version for p in found):
        known = ", ".join(p.version for p in found) or "none"
        raise OodmlError(f"no published split set {dataset}@{version}; published versions: {known} "
                         f"(searched {', '.join(map(str, search_paths())) or 'nothing'}; set $OODML_SPLITS)")
    if not found:
        raise OodmlError(f"no published split set for {dataset!r} (searched "
                         f"{', '.join(map(str, search_paths())) or 'nothing'}); run `oodml make-splits {dataset}`")
    chosen = version if version is not None else max(found, key=_created).version
    return read(one_content(split_set_copies(dataset, chosen)).path)


def resolve(dataset: str, ref: SplitSet | str | Path | None) -> SplitSet:
    """A split set from what a user gave: a loaded one, a manifest directory, a version of ``dataset``'s
    published split sets, or None for the latest."""
    if isinstance(ref, SplitSet):
        return ref
    if ref is not None and Path(ref).is_dir():
        return read_split_set(Path(ref))
    return load(dataset, None if ref is None else str(ref))


def open_split_set(ref: SplitSet | str | Path) -> SplitSet:
    """A split set from what names it: a loaded one, a manifest directory, or ``DATASET[@VERSION]`` (the latest
    published version when no version is given)."""
    if isinstance(ref, SplitSet):
        return ref
    if Path(ref).is_dir():
        return read_split_set(Path(ref))
    if isinstance(ref, Path) or "/" in str(ref) or os.sep in str(ref):
        raise OodmlError(f"{ref}: no such split set directory; give a directory holding {CHECKSUMS} "
                         "or DATASET@VERSION (see `oodml splits list`)")
    dataset, _, version = str(ref).partition("@")
    return load(dataset, version or None)


def verify_split_sets(refs: Sequence[str | Path] | None = None) -> list[tuple[str, SplitSet | None, str | None]]:
    """Verify each split set ``refs`` names (see :func:`open_split_set`), or every published one.

    Returns:
        One ``(name as given, split set or None, problem or None)`` per split set, in order; every published
        one is named ``DATASET@VERSION``, so a name held with two digests is a problem (:func:`load`).

    Raises:
        OodmlError: when no split set is given and none is published.
    """
    targets = list(refs) if refs else [f"{p.dataset}@{p.version}" for p in published_split_sets()]
    if not targets:
        raise OodmlError("no published split sets to verify")
    checks = []
    for ref in targets:
        try:
            checks.append((str(ref), open_split_set(ref), None))
        except OodmlError as exc:
            checks.append((str(ref), None, str(exc)))
    return checks


def published_copy(dataset: str, version: str, dest: Path) -> SplitSet | None:
    """The published ``dataset@version`` that a split set written at ``dest`` must reproduce: the one at
    ``dest`` when it exists, else the one on the search paths (verified); None when the name is free.

    Raises:
        OodmlError: when the places holding the name record different digests (naming two of them).
    """
    dest = Path(dest)
    copies = split_set_copies(dataset, version)
    if dest.exists():  # first, as itself when it is on the search paths
        here = [p for p in copies if p.path.resolve() == dest.resolve()] or [
            PublishedSplitSet(dataset, version, dest, SplitLocation("--out", dest.parent.parent))]
        copies = here + [p for p in copies if p.path.resolve() != dest.resolve()]
    return read_split_set(one_content(copies).path) if copies else None

