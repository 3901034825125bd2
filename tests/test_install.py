"""Installing oodml as a user would: the wheel carries the published split sets and the glyphs bytes, and an
installed oodml finds them from any directory.

The slow test builds an sdist from a clean copy of the sources, a wheel from that sdist, and installs the
wheel into a fresh virtual environment outside the checkout.  The new environment reuses the project
environment's torch and friends through a ``.pth`` file (no download), added after the install so pip
never sees the checkout's editable oodml.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from oodml.cli import main
from oodml.splits.catalogue import published_split_sets
from oodml.splits.locations import split_locations

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("oodml", "splits", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
PUBLISHED = {"glyphs@v1", "cars196@oodml-v1"}
#: The installed oodml runs as a user's would: no split sets or modules pointed at by this test session.
USER_ENV = {k: v for k, v in os.environ.items() if k not in ("OODML_SPLITS", "PYTHONPATH")}


def test_search_order_is_env_then_project_then_installed(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    shutil.copytree(REPO / "splits" / "glyphs", mine / "glyphs")
    project = tmp_path / "project"
    shutil.copytree(REPO / "splits" / "glyphs", project / "splits" / "glyphs")
    monkeypatch.chdir(project)
    monkeypatch.setenv("OODML_SPLITS", os.pathsep.join([str(mine), str(tmp_path / "missing")]))
    sources = [(loc.source, loc.path) for loc in split_locations()]
    assert sources == [("$OODML_SPLITS", mine), ("$OODML_SPLITS", tmp_path / "missing"),
                       ("project", project / "splits"), ("installed", REPO / "splits")]
    found = {f"{p.dataset}@{p.version}": p.location.source for p in published_split_sets()}
    assert found == {"glyphs@v1": "$OODML_SPLITS", "cars196@oodml-v1": "installed"}   # the earlier path wins


def test_splits_list_and_version_say_where_split_sets_were_found(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                       # no ./splits here: only the installed ones
    monkeypatch.delenv("OODML_SPLITS", raising=False)
    assert main(["splits", "list"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert {(name, source) for name, source, _ in rows} == {(name, "installed") for name in PUBLISHED}
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert f"installed at {REPO / 'oodml'}" in out and f"installed      {REPO / 'splits'}" in out


def _run(argv: list[str], cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(map(str, argv))}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _build_wheel(work: Path) -> Path:
    """sdist from a clean copy of the sources, then a wheel from that sdist (so MANIFEST.in is tested too)."""
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    build = "from setuptools import build_meta; print(build_meta.build_sdist({!r}))".format(str(work / "sdist"))
    sdist = work / "sdist" / _run([sys.executable, "-c", build], cwd=src).split()[-1]
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work / "wheel"),
          str(sdist)], cwd=work)
    return next((work / "wheel").glob("oodml-*.whl"))


def _install(wheel: Path, venv: Path) -> Path:
    """A fresh venv with the wheel installed; returns its python.  Dependencies come from this environment."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], cwd=venv.parent)
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv).strip()
    (Path(site) / "zz_project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, python of a fresh venv with it installed, a working directory outside the checkout)."""
    work = tmp_path_factory.mktemp("install")
    assert REPO not in work.parents
    wheel = _build_wheel(work)
    python = _install(wheel, work / "venv")
    home = work / "home"
    home.mkdir()
    return wheel, python, home


@pytest.mark.slow
def test_the_wheel_carries_the_split_sets_and_the_glyphs_bytes(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for split_set in ("glyphs/v1", "cars196/oodml-v1"):
        folder = REPO / "splits" / split_set
        shipped = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert {f"oodml/_splits/{split_set}/{name}" for name in shipped} <= names
    assert "oodml/datasets/data/glyphs.parquet" in names
    assert not any("__pycache__" in name or name.endswith(".gitkeep") for name in names)


@pytest.mark.slow
def test_installed_oodml_lists_and_verifies_its_split_sets(installed):
    _, python, home = installed
    oodml = str(python.parent / "oodml")            # the console script the wheel installed
    rows = [line.split() for line in _run([oodml, "splits", "list"], cwd=home, env=USER_ENV).splitlines()]
    assert {name for name, _, _ in rows} == PUBLISHED
    assert all(source == "installed" and path.startswith(str(python.parents[1])) for _, source, path in rows)
    assert _run([oodml, "splits", "verify"], cwd=home, env=USER_ENV).count("ok  ") == 2


@pytest.mark.slow
def test_installed_oodml_loads_glyphs_and_evaluates_zero_shot(installed):
    _, python, home = installed
    script = (
        "import json, oodml\n"
        "from oodml import splits\n"
        "from oodml.cli import main, version_report\n"
        "from oodml.datasets import load_dataset\n"
        "split_set = splits.load('glyphs', 'v1')\n"
        "split_set.check_dataset(load_dataset('glyphs').fingerprint)\n"
        "code = main(['-q', 'evaluate', 'glyph-cnn', '--dataset', 'glyphs', '--splits', 'v1', '--levels', '1',\n"
        "             '--no-clustering', '--device', 'cpu', '--out', 'results'])\n"
        "print(json.dumps({'oodml': oodml.__file__, 'splits': str(split_set.path), 'code': code,\n"
        "                  'version': version_report()}))\n"
    )
    seen = json.loads(_run([str(python), "-c", script], cwd=home, env=USER_ENV).splitlines()[-1])
    venv = python.parents[1]
    assert venv in Path(seen["oodml"]).parents and venv in Path(seen["splits"]).parents   # not the checkout
    assert f"installed at {venv}" in seen["version"] and "installed      " + str(venv) in seen["version"]
    assert seen["code"] == 0 and any((home / "results").iterdir())
