"""The documentation site: it builds with ``mkdocs build --strict``, every example in it runs, and a broken
link, anchor or API reference fails the build.

Examples.  Each page's Python and shell blocks run in page order in a fresh folder.  Python blocks run with
pytest-examples (chosen over pytest-markdown-docs because it is a fixture used from this ordinary test file,
so the plain ``pytest`` of ``make test`` runs it without a flag or a second collection root, and because it
checks printed output against the ``#>`` lines shown on the page).  Shell blocks hold ``oodml ...`` commands
only; each runs in-process through ``oodml.cli.main`` (no interpreter start per command) and must exit 0.
A page that continues another (``<!-- docs-test: continues guides/make-splits.md -->``) starts from a copy
of the folder that page left behind.  A block is not run when its title says so (``title="Not run by the
docs tests: needs a GPU"``); material renders the title above the block, so the page says it too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
from pytest_examples import CodeExample  # noqa: E402

from oodml.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
ARTIFACTS = REPO / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

FENCE = re.compile(r"^(?P<indent> *)(?P<ticks>```+)(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=indent)(?P=ticks)[ \t]*$",
                   re.M | re.S)
TITLE = re.compile(r'title="([^"]*)"')
CONTINUES = re.compile(r"<!-- docs-test: continues (\S+) -->")
NOT_RUN = "not run by the docs tests:"
PYTHON, SHELL = {"python", "py"}, {"sh", "bash", "shell", "console"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int            # 1-based line of the opening fence
    language: str
    title: str
    indent: int
    info: str
    source: str

    @property
    def not_run(self) -> bool:
        return self.title.lower().startswith(NOT_RUN)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """Every fenced block of a Markdown page, in order."""
    text = page.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        info = m["info"].strip()
        title = TITLE.search(info)
        indent = len(m["indent"])
        body = "".join(line[indent:] + "\n" for line in m["body"].splitlines())
        found.append(Block(page, text.count("\n", 0, m.start()) + 1, info.split(" ")[0].lower().strip("{."),
                           title[1] if title else "", indent, info, body))
    return found


def runnable(block: Block) -> bool:
    return block.language in PYTHON | SHELL and not block.not_run


PAGES = sorted(DOCS.rglob("*.md"))
PAGES_WITH_EXAMPLES = [p for p in PAGES if any(runnable(b) for b in code_blocks(p))]


def shell_commands(source: str) -> list[list[str]]:
    """The commands of a shell block: backslash continuations joined, ``#`` comments and a ``$ `` prompt dropped."""
    commands = []
    for line in source.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[0] == "$":
            argv = argv[1:]
        if argv:
            commands.append(argv)
    return commands


def run_shell(block: Block, capsys) -> None:
    for argv in shell_commands(block.source):
        assert argv[0] == "oodml", (f"{block.where}: only `oodml ...` commands run here, not {argv[0]!r}; give the "
                                    f'block a title="Not run by the docs tests: <reason>" if it cannot run')
        capsys.readouterr()
        try:
            status = main(argv[1:])
        except SystemExit as exit_:          # argparse: --help, --version, usage errors
            status = exit_.code
        out, err = capsys.readouterr()
        assert status == 0, f"{block.where}: `{shlex.join(argv)}` exited {status}\n{out[-2000:]}\n{err[-2000:]}"


def run_python(block: Block, eval_example) -> None:
    """Run a Python block; what it prints must match the ``#>`` lines under each ``print``."""
    example = CodeExample.create(block.source, path=block.page, start_line=block.line, prefix=block.info,
                                 indent=block.indent)
    eval_example.set_config(line_length=120)
    try:
        eval_example.run_print_check(example)
        return
    except Exception as exc:
        if type(exc).__name__ == "Failed":       # a print check that failed is already a readable report
            raise
        # pytest-examples rewrites the traceback with frames placed in the Markdown file, which pytest's
        # reporting cannot format: report the page, the line and the exception instead, outside this block.
        failure = "".join(traceback.format_exception_only(exc)).strip()
    raise AssertionError(f"{block.where}: the example raised {failure}")


_FOLDERS: dict[Path, Path] = {}


def run_page(page: Path, folder: Path, monkeypatch, eval_example, capsys) -> None:
    """Run ``page``'s examples in ``folder`` (a copy of what the page it continues left behind, if any)."""
    continues = CONTINUES.search(page.read_text(encoding="utf-8"))
    if continues:
        before = DOCS / continues[1]
        if before not in _FOLDERS:
            start = folder.parent / f"{before.stem}-done"
            start.mkdir()
            run_page(before, start, monkeypatch, eval_example, capsys)
            _FOLDERS[before] = start
        shutil.copytree(_FOLDERS[before], folder, dirs_exist_ok=True)
    monkeypatch.chdir(folder)
    for block in code_blocks(page):
        if not runnable(block):
            continue
        if block.language in PYTHON:
            run_python(block, eval_example)
        else:
            run_shell(block, capsys)


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: str(p.relative_to(DOCS)))
def test_the_examples_of_a_page_run(page, tmp_path, monkeypatch, eval_example, capsys):
    work = tmp_path / "work"
    work.mkdir()
    run_page(page, work, monkeypatch, eval_example, capsys)


def test_every_example_runs_or_says_why_not():
    """Code is either run (Python, `oodml` commands) or output/layout text, or its title says why it is not run."""
    skipped = []
    for page in PAGES:
        for block in code_blocks(page):
            if block.not_run:
                reason = block.title[len(NOT_RUN):].strip()
                assert reason, f"{block.where}: say why the example is not run"
                skipped.append(block.where)
            elif block.language not in PYTHON | SHELL:
                assert block.language in {"", "text", "json", "yaml", "toml"}, f"{block.where}: {block.language}?"
    assert len(PAGES_WITH_EXAMPLES) >= 8 and skipped     # the guides have examples, and some need a GPU or data


def test_a_shell_block_is_split_into_commands():
    source = "oodml evaluate M --dataset glyphs \\\n    --out 'my results'   # a comment\n\n$ oodml splits list\n"
    assert shell_commands(source) == [["oodml", "evaluate", "M", "--dataset", "glyphs", "--out", "my results"],
                                      ["oodml", "splits", "list"]]


# -- the site -----------------------------------------------------------------------------------------------

def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The whole site, built as `make docs` builds it (strict) into a temporary folder."""
    site = tmp_path_factory.mktemp("site")
    done = mkdocs_build(REPO / "mkdocs.yml", site)
    assert done.returncode == 0, done.stderr[-4000:]
    return site


def test_the_site_builds_strictly_with_both_references(site):
    cli = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    for command in ("oodml-evaluate", "oodml-make-splits", "oodml-leaderboard-submit", "oodml-splits-diff"):
        assert f'id="{command}"' in cli                    # one section per command, from the parser
    assert "--save-embeddings" in cli and "<!-- oodml-cli-reference -->" not in cli
    api = (site / "reference" / "api.html").read_text(encoding="utf-8")
    for name in ("oodml.shift.frechet_distance", "oodml.evaluation.evaluate", "oodml.splits.load"):
        assert f'id="{name}"' in api                       # rendered from the docstrings
    assert "nuclear norm" in api                           # a docstring's own words


def test_the_cli_reference_follows_the_parser():
    """Whatever the parser offers is in the generated page: add an option and it appears."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("generated", DOCS / "hooks" / "generated.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    from oodml.cli import build_parser

    parser = build_parser()
    assert "--no-such-option" not in "\n".join(hook.command_sections(parser))
    evaluate = next(sub for name, _, sub in hook._subcommands(parser) if name == "evaluate")
    evaluate.add_argument("--no-such-option", help="added by this test")
    text = "\n".join(hook.command_sections(parser))
    assert "--no-such-option" in text and "added by this test" in text


def test_the_names_page_lists_what_is_registered(monkeypatch):
    """Every registry's names are on the generated page; a newly registered loss appears there too."""
    import importlib.util

    from oodml.losses import LOSSES, LossSpec

    spec = importlib.util.spec_from_file_location("generated", DOCS / "hooks" / "generated.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    text = hook.registries_markdown()
    for _, _, registry in hook.registries():
        assert all(f"| `{name}` |" in text for name in registry)
    monkeypatch.setitem(LOSSES, "lifted", LossSpec(lambda c, d: (None, None), False, "lifted structure loss"))
    assert "| `lifted` | lifted structure loss |" in hook.registries_markdown()


def one_page_site(tmp_path: Path, page: str) -> Path:
    """The real mkdocs.yml (plugins, validation, strictness) on a single page, so a failure is quick to build."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Index\n\n## A heading\n\nText.\n")
    (docs / "page.md").write_text(page)
    config.update(docs_dir=str(docs), site_dir=str(tmp_path / "site"), nav=["index.md", "page.md"], hooks=[])
    config["plugins"][2]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(REPO)]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    return tmp_path / "mkdocs.yml"


@pytest.mark.parametrize(("page", "builds"), [
    ("# Page\n\nSee [the index](index.md#a-heading).\n\n::: oodml.shift.frechet_distance\n", True),  # the control
    ("# Page\n\nSee [a page](no-such-page.md).\n", False),                                   # a broken link
    ("# Page\n\nSee [a heading](index.md#no-such-heading).\n", False),                      # a missing anchor
    ("# Page\n\n::: oodml.shift.frechet_distanse\n", False),                                # a renamed function
    ("# Page\n\nSee [it][oodml.shift.frechet_distanse].\n", False),                         # a stale cross-reference
], ids=["control", "broken-link", "missing-anchor", "renamed-function", "stale-crossref"])
def test_a_broken_link_or_reference_fails_the_strict_build(page, builds, tmp_path):
    done = mkdocs_build(one_page_site(tmp_path, page), tmp_path / "site")
    assert (done.returncode == 0) == builds, f"strict build exit {done.returncode} for:\n{page}\n{done.stderr[-3000:]}"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `make test` installs it (apt-get install chromium)")
def test_the_quickstart_page_renders_in_a_browser(site):
    from PIL import Image

    page = (site / "quickstart.html").as_uri()
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    dom = subprocess.run([*args, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"<[^>]+>", "", dom.stdout)              # highlighted code is split into spans
    assert "md-header" in dom.stdout and "oodml splits verify glyphs@v1" in text   # material laid it out
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "docs-quickstart.png"
    shot.unlink(missing_ok=True)
    done = subprocess.run([*args, f"--screenshot={shot}", "--window-size=1280,900", page], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    header = np.array([0x40, 0x51, 0xB5])                  # material's indigo header bar, with the site name
    assert (np.abs(image[:48] - header).sum(2) < 30).mean() > 0.5, f"no header bar in {shot}"
    body = image[120:, 200:1000]                            # code blocks and text: dark on light, not a blank page
    assert (body.sum(2) < 300).mean() > 0.005, f"no text in {shot}"


def test_the_readme_links_into_the_site():
    """The README is the front page: every relative link in it names a file that exists (GitHub renders them)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert {"docs/index.md", "docs/quickstart.md", "docs/reference/cli.md", "docs/assets/degradation-curve.svg"} <= {
        t.rstrip("/") for t in local}
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
