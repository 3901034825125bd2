"""The rules of oodml's code that `make test` enforces (issue 28): ruff clean (with its argument-count and
complexity limits, pyproject.toml), no function over 60 lines (tools/long_functions.py), the import layers and
no import circle (import-linter, the contracts in pyproject.toml), and docs/layout.md naming every module."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ROOT / "docs" / "layout.md"


def run(*argv: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=600)


# --- ruff -----------------------------------------------------------------------------------------------

def test_ruff_finds_nothing_in_the_package_tests_and_tools():
    done = run(sys.executable, "-m", "ruff", "check", "--no-cache", "oodml", "tests", "tools")
    assert done.returncode == 0, f"ruff check oodml tests tools:\n{done.stdout}{done.stderr}"


def test_ruff_limits_arguments_and_complexity(tmp_path):
    """The limits are configured, so a function over them is reported (the check above can fail)."""
    (tmp_path / "many.py").write_text("def f(a, b, c, d, e, f, g, h, i):\n    return a\n")
    branches = "".join(f"    if x == {k}:\n        return {k}\n" for k in range(11))
    (tmp_path / "branchy.py").write_text(f"def g(x):\n{branches}    return -1\n")
    done = run(sys.executable, "-m", "ruff", "check", "--no-cache", "--config", ROOT / "pyproject.toml", tmp_path)
    assert done.returncode == 1
    assert "PLR0913" in done.stdout and "many.py" in done.stdout
    assert "C901" in done.stdout and "branchy.py" in done.stdout


# --- the 60-line rule -----------------------------------------------------------------------------------

def test_no_function_in_the_package_is_over_60_lines():
    done = run(sys.executable, ROOT / "tools" / "long_functions.py", "--limit", "60", "oodml")
    assert done.returncode == 0 and not done.stdout, f"functions over 60 lines (split them):\n{done.stdout}"


def test_long_functions_reports_a_61_line_function_and_passes_a_60_line_one(tmp_path):
    def function(name: str, lines: int) -> str:
        return f"def {name}():\n" + "    x = 0\n" * (lines - 2) + "    return x\n"

    (tmp_path / "code.py").write_text(function("fits", 60) + "\n\n" + function("too_long", 61))
    done = run(sys.executable, ROOT / "tools" / "long_functions.py", "--limit", "60", tmp_path)
    assert done.returncode == 1
    assert done.stdout.split() == ["61", f"{tmp_path / 'code.py'}:63", "too_long"]


# --- import layers and circles --------------------------------------------------------------------------

def lint_imports() -> Path:
    path = Path(sys.executable).parent / "lint-imports"
    if not path.exists():
        pytest.fail("lint-imports is missing: install the dev extras (pip install -e '.[dev]'; `make test` does)")
    return path


def test_imports_keep_the_layers_and_make_no_circle():
    done = run(lint_imports(), "--no-cache")
    assert done.returncode == 0, f"lint-imports (contracts in pyproject.toml):\n{done.stdout[-6000:]}{done.stderr}"


def test_the_layers_contract_refuses_an_upward_import(tmp_path):
    """The contract as written catches a low module importing a high one, inside a function too."""
    package = tmp_path / "oodml"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text("from . import errors\n")
    (package / "errors.py").write_text("def f():\n    from . import cli\n")
    config = tmp_path / "pyproject.toml"
    config.write_text('[tool.importlinter]\nroot_package = "oodml"\n\n[[tool.importlinter.contracts]]\n'
                      'name = "layers"\ntype = "layers"\ncontainers = ["oodml"]\nlayers = ["cli", "errors"]\n')
    done = run(lint_imports(), "--no-cache", config, cwd=tmp_path)
    assert done.returncode == 1 and "oodml.errors is not allowed to import oodml.cli" in done.stdout


# --- docs/layout.md -------------------------------------------------------------------------------------

def layout_entries() -> dict[str, str]:
    """The text of each entry of the layout's ``oodml/`` block: ``"oodml/"`` for the package's own files (top-level
    entries and their continuation lines), ``"oodml/<pkg>/"`` for a subpackage's entry."""
    block = LAYOUT.read_text(encoding="utf-8").split("```")[1]
    entries: dict[str, str] = {"oodml/": ""}
    current = "oodml/"
    for line in block.splitlines():
        if re.match(r"^\S", line):                       # a repository folder or file: the package block ends
            current = "oodml/" if line.startswith("oodml/") else ""
            continue
        entry = re.match(r"^  (\S+)", line)
        if entry:
            current = f"oodml/{entry.group(1)}" if entry.group(1).endswith("/") else "oodml/"
        if current:
            entries[current] = entries.get(current, "") + "\n" + line
            if current != "oodml/":
                entries["oodml/"] += "\n" + line
    return entries


def unnamed_modules() -> list[str]:
    """Every module file of oodml/ whose name its layout entry does not give: ``name.py`` in the package's own
    text for top-level modules, within the subpackage's entry for the others (a module of a nested package,
    ``models/sources/timm.py``, within ``models/``'s entry)."""
    entries = layout_entries()
    missing = []
    for path in sorted((ROOT / "oodml").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        parts = relative.split("/")
        if path.name == "__init__.py":
            continue
        section = "oodml/" if len(parts) == 2 else f"oodml/{parts[1]}/"
        if not re.search(rf"(?<![\w/]){re.escape(path.name)}\b", entries.get(section, "")):
            missing.append(relative)
    return missing


def test_the_layout_names_every_module():
    missing = unnamed_modules()
    assert not missing, f"docs/layout.md does not name {', '.join(missing)}: add each to its package's entry"


def test_a_new_module_missing_from_the_layout_is_reported(tmp_path, monkeypatch):
    fake = tmp_path / "oodml"
    (fake / "splits").mkdir(parents=True)
    for name in ("cli.py", "splits/manifest.py", "splits/brand_new.py", "unlisted.py"):
        (fake / name).write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert unnamed_modules() == ["oodml/splits/brand_new.py", "oodml/unlisted.py"]


@pytest.mark.parametrize("thing", ["a model", "a dataset", "a distance", "a metric", "an adaptation"])
def test_the_layout_says_where_to_add(thing):
    text = LAYOUT.read_text(encoding="utf-8")
    section = text.split("## Where to add", 1)[1] if "## Where to add" in text else ""
    assert re.search(rf"^- \*\*{thing}\*\*", section, re.M), f"docs/layout.md says nowhere where to add {thing}"
