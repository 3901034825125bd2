"""Publishing a split set: a new ``dataset@version`` written once, a published one only ever reproduced.

A published name is immutable (:mod:`oodml.splits.manifest`): writing a split
set under a name the catalogue already holds (:func:`oodml.splits.catalogue.published_copy`)
keeps the published files when the content reproduces them
(:func:`oodml.splits.compare.compare`) and refuses other content in one line.
This module sits above both the catalogue and the comparison, which reads
split sets through the catalogue.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from .._fs import atomic_path, claim
from ..errors import OodmlError
from .catalogue import published_copy
from .compare import compare
from .levels import Level
from .locations import CHECKSUMS
from .manifest import FILES, SplitSet, check_levels, check_version_name, read_split_set, split_set_of, write_manifest


def write_split_set(out: Path, dataset: str, version: str, levels: tuple[Level, ...], metadata: dict) -> SplitSet:
    """Publish a split set under ``out/<dataset>/<version>/``, atomically.

    A published name is immutable: when ``dataset@version`` is already
    published there or on the search paths (:func:`~oodml.splits.catalogue.published_copy`), content
    that reproduces it (same class sets and episodes, measured values within
    :data:`oodml.splits.compare.RTOL`) keeps the published files -- copied to
    ``out`` when they live elsewhere, so the name has one digest everywhere --
    and different content is refused.

    Returns:
        The published :class:`~oodml.splits.manifest.SplitSet` (as read back and verified).
    """
    check_version_name(version)
    check_levels(levels, f"split set {dataset}@{version}")
    new = split_set_of(dataset, version, levels, metadata)
    dest = Path(out) / dataset / version
    # One writer at a time, from the check to the rename: another's result is then published, or refused.
    with _empty_folders_removed(dest.parent), claim(dest, what=f"split set {dataset}@{version} at {dest}",
                                                   fix="choose another --version or --out"):
        published = published_copy(dataset, version, dest)
        return _republish(published, new, dest) if published is not None else write_manifest(new, dest)


@contextlib.contextmanager
def _empty_folders_removed(folder: Path) -> Iterator[None]:
    """On an error in the block, remove ``folder`` and those of its parents that it created, if still empty
    (a refused split set leaves nothing behind, not even ``out/<dataset>/``)."""
    new = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for path in new:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def name_taken(published: SplitSet, difference: str) -> OodmlError:
    """The refusal of other content under ``published``'s name; ``difference`` says what differs."""
    return OodmlError(f"{published.dataset}@{published.version} is already published at {published.path} with "
                      f"different content ({difference}); published versions are immutable, choose a new --version "
                      "(then `oodml splits diff` compares the two)")


def _republish(published: SplitSet, new: SplitSet, dest: Path) -> SplitSet:
    """``new`` published under ``published``'s name at ``dest``: refused unless it reproduces ``published``,
    whose files are then kept (at ``dest``) or copied there (audits stay behind)."""
    comparison = compare(new, published)
    if not comparison.reproduces:
        raise name_taken(published, comparison.first_difference())
    if published.path.resolve() == dest.resolve():
        return published
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        for name in (*FILES, CHECKSUMS):
            shutil.copyfile(published.path / name, tmp / name)
    return read_split_set(dest)
