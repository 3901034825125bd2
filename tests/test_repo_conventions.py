"""The conventions of a public benchmark's repository (issue 29, item 3), checked as far as this machine can:
the CI, leaderboard and release workflows (their triggers, jobs and steps, and the leaderboard job's commands
run for real on a scratch repository), the release's distribution check on a real sdist and wheel, how to cite
oodml (CITATION.cff), and what each release changed (CHANGELOG.md).

Nothing here reaches GitHub or PyPI: the actions a workflow uses are checked by name, the shell commands of the
leaderboard job are run locally, on a copy, so the checkout's own leaderboard/ is never written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from oodml.metrics import METRICS_DIGESTS, METRICS_VERSION

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
VENV_BIN = Path(sys.executable).parent
ENTRY = Path("leaderboard/submissions/glyphs/v1/tiny")   # conftest's small real entry, added by the scratch PR
PAPERS = {  # title -> (first author's family name, year)
    "Characterizing Generalization under Out-Of-Distribution Shifts in Deep Metric Learning": ("Milbich", 2021),
    "Adapted Deep Embeddings: A Synthesis of Methods for k-Shot Inductive Transfer Learning": ("Scott", 2018),
    "Deep Metric Learning with Spherical Embedding": ("Zhang", 2020),
}


def workflow(name: str) -> dict:
    """A workflow file, parsed.  YAML 1.1 reads the key ``on`` as True; it is returned under ``"on"``."""
    parsed = yaml.safe_load((WORKFLOWS / name).read_text())
    parsed["on"] = parsed.pop(True, parsed.get("on"))
    return parsed


def step(job: dict, name: str) -> dict:
    """The step of ``job`` called ``name``."""
    found = [s for s in job["steps"] if s.get("name") == name]
    assert len(found) == 1, [s.get("name") for s in job["steps"]]
    return found[0]


def uses(job: dict) -> list[str]:
    """The actions a job uses, without their versions: ``["actions/checkout", ...]``."""
    return [s["uses"].split("@")[0] for s in job["steps"] if "uses" in s]


def package_version() -> str:
    """The version in pyproject.toml (read with a pattern: tomllib is Python 3.11's)."""
    return re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def published_split_sets() -> list[Path]:
    return sorted(p for p in (REPO / "splits").glob("*/*") if (p / "checksums.json").is_file())


# --- the workflows, as files ---------------------------------------------------------------------------------------

def test_ci_runs_the_ci_entry_point_on_push_and_pull_request_with_python_311():
    ci = workflow("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    job, = ci["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    assert uses(job) == ["actions/checkout", "actions/setup-python"]
    assert str(job["steps"][1]["with"]["python-version"]) == "3.11"
    assert job["steps"][-1]["run"].strip() == ".ci/run"
    assert os.access(REPO / ".ci" / "run", os.X_OK)


def test_the_leaderboard_job_runs_on_pull_requests_touching_submissions():
    board = workflow("leaderboard.yml")
    assert set(board["on"]) == {"pull_request"}
    assert board["on"]["pull_request"]["paths"] == ["leaderboard/submissions/**"]
    job = board["jobs"]["verify"]
    assert job["steps"][0]["uses"].startswith("actions/checkout@") and job["steps"][0]["with"]["fetch-depth"] == 0
    assert "pip install ." in step(job, "Install")["run"]
    assert "oodml leaderboard verify" in step(job, "Verify the changed entries")["run"]
    rebuild = step(job, "The rendered board is current")["run"]
    assert "oodml leaderboard build" in rebuild and "git diff --exit-code leaderboard/" in rebuild
    assert board["permissions"] == {"contents": "read"}


def test_a_tag_builds_checks_and_publishes_with_trusted_publishing():
    release = workflow("release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    build, publish = release["jobs"]["build"], release["jobs"]["publish"]
    runs = "\n".join(s.get("run", "") for s in build["steps"])
    assert "python -m build" in runs and ".github/scripts/check_dist.py dist" in runs
    assert publish["needs"] == "build"
    assert publish["permissions"] == {"id-token": "write"}      # OIDC for PyPI; no password or token secret
    assert uses(publish)[-1] == "pypa/gh-action-pypi-publish"
    assert "secrets." not in (WORKFLOWS / "release.yml").read_text()


def test_no_workflow_grants_more_than_it_needs():
    for name in ("ci.yml", "leaderboard.yml", "release.yml"):
        assert workflow(name)["permissions"] == {"contents": "read"}, name


# --- CITATION.cff and CHANGELOG.md ---------------------------------------------------------------------------------

def test_citation_names_oodml_at_its_version_and_the_three_papers():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["title"].startswith("oodml") and str(cff["version"]) == package_version()
    assert cff["authors"] and cff["message"]
    papers = {ref["title"]: (ref["authors"][0]["family-names"], ref["year"]) for ref in cff["references"]}
    assert papers == PAPERS
    assert all("Neural Information Processing Systems" in ref["collection-title"] for ref in cff["references"])


def test_the_changelog_records_the_package_split_set_and_metrics_versions():
    text = (REPO / "CHANGELOG.md").read_text()
    assert f"## {package_version()} " in text and f"package: oodml {package_version()}" in text
    for folder in published_split_sets():
        digest = json.loads((folder / "checksums.json").read_text())["digest"]
        assert f"`{folder.parent.name}@{folder.name}`" in text and digest in text, folder
    assert f"metrics: version {METRICS_VERSION} " in text and METRICS_DIGESTS[METRICS_VERSION] in text


def test_the_layout_page_and_the_sdist_name_the_new_files():
    layout = (REPO / "docs" / "layout.md").read_text()
    assert all(name in layout for name in (".github/workflows/", "CITATION.cff", "CHANGELOG.md"))
    manifest = (REPO / "MANIFEST.in").read_text()
    assert "CITATION.cff" in manifest and "CHANGELOG.md" in manifest


# --- the leaderboard job's commands, on a scratch pull request -------------------------------------------------------

def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": os.devnull}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


def run_step(repo: Path, name: str, **env: str) -> subprocess.CompletedProcess:
    """Run the ``run:`` script of the leaderboard job's step ``name`` as GitHub's bash would, in ``repo``, with
    this environment's oodml first on the PATH and ``env`` (the step's ``${{ }}`` values) added."""
    job = workflow("leaderboard.yml")["jobs"]["verify"]
    script = step(job, name)["run"]
    assert "${{" not in script                   # expressions live in env:, so the script runs unchanged here
    path = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=repo,
                          env={**os.environ, "PATH": path, **env}, capture_output=True, text=True, timeout=900)


@pytest.fixture
def scratch_pull_request(leaderboard_entry, tmp_path) -> tuple[Path, str]:
    """A scratch repository whose base commit has no entry and whose head adds one real entry (conftest's: a
    committed one verifies the same way, three times slower), with the checkout's board (rendered for the
    committed entries, so stale here); returns (repository, base commit)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "README.md").write_text("scratch\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "base")
    base = git(repo, "rev-parse", "HEAD").strip()
    shutil.copytree(leaderboard_entry, repo / ENTRY)
    for board_file in ("README.md", "index.html"):
        shutil.copy2(REPO / "leaderboard" / board_file, repo / "leaderboard" / board_file)
    git(repo, "add", "leaderboard")
    git(repo, "commit", "-q", "-m", "add an entry")
    return repo, base


@pytest.mark.slow
def test_the_leaderboard_job_verifies_the_added_entry_and_refuses_a_stale_board(scratch_pull_request):
    repo, base = scratch_pull_request
    before = {p: p.read_bytes() for p in (REPO / "leaderboard").glob("*") if p.is_file()}
    verified = run_step(repo, "Verify the changed entries", BASE=base)
    assert verified.returncode == 0, verified.stderr
    assert f"ok      {ENTRY}: mean recall@1" in verified.stdout
    stale = run_step(repo, "The rendered board is current")          # the board still lists the other entries
    assert stale.returncode == 1 and "::error::the committed board is not what" in stale.stdout
    git(repo, "add", "leaderboard")
    git(repo, "commit", "-q", "-m", "rebuild the board")
    current = run_step(repo, "The rendered board is current")
    assert current.returncode == 0, current.stdout + current.stderr
    assert {p: p.read_bytes() for p in (REPO / "leaderboard").glob("*") if p.is_file()} == before  # not touched


@pytest.mark.slow
def test_the_leaderboard_job_fails_a_tampered_entry_and_skips_a_removed_one(scratch_pull_request):
    repo, base = scratch_pull_request
    embeddings = next((repo / ENTRY / "embeddings").glob("*.parquet"))
    data = bytearray(embeddings.read_bytes())
    data[len(data) // 2] ^= 0xFF
    embeddings.write_bytes(bytes(data))
    git(repo, "commit", "-q", "-am", "tamper")
    tampered = run_step(repo, "Verify the changed entries", BASE=base)
    assert tampered.returncode == 2 and f"FAILED  {ENTRY}" in tampered.stdout
    assert "does not match the sha256 in submission.json" in tampered.stdout
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "rm", "-q", "-r", str(ENTRY))
    git(repo, "commit", "-q", "-m", "withdraw the entry")
    removed = run_step(repo, "Verify the changed entries", BASE=head)
    assert removed.returncode == 0 and removed.stdout.strip() == "no entry left to verify"


# --- the release's distribution check ------------------------------------------------------------------------------

def build_distributions(out: Path) -> Path:
    """sdist from a copy of what MANIFEST.in and the build read, then the wheel from that sdist, into
    ``out/dist`` (what ``python -m build`` does, without its isolated environment: no download)."""
    src = out / "src"
    for name in ("oodml", "splits", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "CITATION.cff",
                 "CHANGELOG.md"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    dist = out / "dist"
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    sdist = dist / done.stdout.split()[-1]
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(dist), str(sdist)], cwd=out, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return dist


def check_dist(dist: Path, *tag: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / ".github" / "scripts" / "check_dist.py"), str(dist), *tag],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def distributions(tmp_path_factory) -> Path:
    return build_distributions(tmp_path_factory.mktemp("release"))


@pytest.mark.slow
def test_the_release_check_passes_the_real_distributions_at_the_right_tag(distributions):
    done = check_dist(distributions, "--tag", f"v{package_version()}")
    assert done.returncode == 0, done.stderr
    wrong = check_dist(distributions, "--tag", "v9.9.9")
    assert wrong.returncode == 1
    assert f"the tag v9.9.9 does not name the built version {package_version()}" in wrong.stderr


@pytest.mark.slow
def test_the_release_check_names_what_a_wheel_or_sdist_lacks(distributions, tmp_path):
    wheel, = distributions.glob("*.whl")
    sdist, = distributions.glob("*.tar.gz")
    dropped = "oodml/_splits/glyphs/v1/episodes.parquet"
    with zipfile.ZipFile(wheel) as full, zipfile.ZipFile(tmp_path / wheel.name, "w") as partial:
        for item in full.infolist():
            if item.filename not in (dropped, "oodml/datasets/data/glyphs.parquet"):
                partial.writestr(item, full.read(item))
    with tarfile.open(sdist) as full, tarfile.open(tmp_path / sdist.name, "w:gz") as partial:
        for member in full.getmembers():
            if not member.name.endswith("/CITATION.cff"):
                partial.addfile(member, full.extractfile(member) if member.isfile() else None)
    done = check_dist(tmp_path)
    assert done.returncode == 1
    assert sorted(done.stderr.splitlines()) == [
        "check_dist: the sdist lacks CITATION.cff",
        "check_dist: the wheel lacks oodml/_splits/glyphs/v1/episodes.parquet",
        "check_dist: the wheel lacks oodml/datasets/data/glyphs.parquet",
    ]
