"""Where published split sets are looked for: ``$OODML_SPLITS``, the project's ``./splits``, the installed ones.

Apart from :mod:`oodml.splits.manifest` (which reads and writes the split sets) so that ``oodml --version``,
which prints these places, needs neither numpy nor pyarrow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: the file every published split set directory holds (its files' sha256 and the content digest)
CHECKSUMS = "checksums.json"


@dataclass(frozen=True)
class SplitLocation:
    """A directory searched for published split sets.

    Attributes:
        source: why it is searched: ``"$OODML_SPLITS"``, ``"project"`` (``./splits`` of the current
            directory) or ``"installed"`` (the split sets that came with oodml).
        path: the directory, holding ``<dataset>/<version>/``.
    """

    source: str
    path: Path


def installed_splits() -> Path | None:
    """The split sets that came with oodml: ``oodml/_splits`` in a wheel (copied there from the top-level
    ``splits/`` at build time), the checkout's ``splits/`` in an editable install; None if neither exists."""
    package = Path(__file__).resolve().parents[1]
    if (package / "_splits").is_dir():
        return package / "_splits"
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "splits").is_dir():
        return checkout / "splits"
    return None


def holds_split_sets(path: Path) -> bool:
    """Whether ``path`` has at least one ``<dataset>/<version>/checksums.json``."""
    return path.is_dir() and any(path.glob(f"*/*/{CHECKSUMS}"))


def split_locations() -> list[SplitLocation]:
    """Where published split sets are looked for, first match winning: ``$OODML_SPLITS``
    (os.pathsep-separated), then ``./splits`` of the current directory if it holds split sets, then the
    installed ones.  A directory reached twice is listed once, under its first source."""
    env = [SplitLocation("$OODML_SPLITS", Path(p)) for p in os.environ.get("OODML_SPLITS", "").split(os.pathsep)
           if p]
    project = Path.cwd() / "splits"
    installed = installed_splits()
    candidates = [*env, *([SplitLocation("project", project)] if holds_split_sets(project) else []),
                  *([SplitLocation("installed", installed)] if installed is not None else [])]
    unique: dict[Path, SplitLocation] = {}
    for location in candidates:
        unique.setdefault(location.path.resolve(), location)
    return list(unique.values())


def search_paths() -> list[Path]:
    """The directories of :func:`split_locations`, in search order."""
    return [location.path for location in split_locations()]
