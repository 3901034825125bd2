"""Check a release's distributions before they are published (.github/workflows/release.yml).

``python .github/scripts/check_dist.py DIST [--tag vX.Y.Z]`` checks that DIST holds one sdist and one wheel of
the same version (the tag's, when given), that the wheel carries the glyphs bytes, the ImageNet class
lists and every file of every published split set (``splits/<dataset>/<version>/`` as ``oodml/_splits/...``)
and no bytecode, and that the sdist carries the split sets, CITATION.cff and CHANGELOG.md.  Prints one line
per problem and exits 1 when there is any, else prints what it checked.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEEL_DATA = ("oodml/datasets/data/glyphs.parquet", "oodml/splits/data/imagenet-1k.json")
SDIST_FILES = ("CITATION.cff", "CHANGELOG.md", "pyproject.toml", "setup.py", "MANIFEST.in")


def published_files(splits: Path) -> list[str]:
    """Every file under ``splits/`` (POSIX paths relative to it), the published split sets and their audits."""
    return sorted(p.relative_to(splits).as_posix() for p in splits.rglob("*")
                  if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in p.parts))


def problems(dist: Path, tag: str | None, splits: Path = REPO / "splits") -> list[str]:
    """What is wrong with the distributions in ``dist`` (empty when nothing is)."""
    wheels, sdists = sorted(dist.glob("oodml-*.whl")), sorted(dist.glob("oodml-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"expected one wheel and one sdist in {dist}, found {len(wheels)} and {len(sdists)}"]
    wheel, sdist = wheels[0], sdists[0]
    version = wheel.name.split("-")[1]
    found = []
    if sdist.name != f"oodml-{version}.tar.gz":
        found.append(f"the sdist {sdist.name} is not of the wheel's version {version}")
    if tag is not None and tag != f"v{version}":
        found.append(f"the tag {tag} does not name the built version {version} (pyproject.toml); tag v{version}")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [*WHEEL_DATA, *(f"oodml/_splits/{name}" for name in published_files(splits))]
    found += [f"the wheel lacks {name}" for name in wanted if name not in names]
    found += [f"the wheel carries {name}" for name in sorted(names) if "__pycache__" in name or name.endswith(".pyc")]
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    wanted = [*SDIST_FILES, *(f"splits/{name}" for name in published_files(splits))]
    found += [f"the sdist lacks {name}" for name in wanted if name not in members]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist", type=Path, help="the folder python -m build wrote")
    parser.add_argument("--tag", help="the release tag (v<version>), checked against the built version")
    args = parser.parse_args(argv)
    found = problems(args.dist, args.tag)
    for problem in found:
        print(f"check_dist: {problem}", file=sys.stderr)
    if not found:
        print(f"check_dist: {', '.join(p.name for p in sorted(args.dist.glob('oodml-*')))} carry what a release needs")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
