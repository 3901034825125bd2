"""Build hook: the published split sets (top-level ``splits/``, their one source) ship inside the wheel
as ``oodml/_splits/``, copied into the build directory only; everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SPLITS = Path(__file__).resolve().parent / "splits"


class BuildWithSplitSets(build_py):
    """``build_py`` that also copies ``splits/**`` to ``<build_lib>/oodml/_splits/``.

    Editable installs skip the copy: there ``oodml.splits.manifest.installed_splits`` finds the checkout's
    ``splits/`` itself."""

    def run(self) -> None:
        super().run()
        if self.editable_mode or not SPLITS.is_dir():
            return
        target = Path(self.build_lib) / "oodml" / "_splits"
        shutil.rmtree(target, ignore_errors=True)  # a stale copy from an earlier build must not leak in
        shutil.copytree(SPLITS, target, ignore=shutil.ignore_patterns("__pycache__", ".*"))


setup(cmdclass={"build_py": BuildWithSplitSets})
