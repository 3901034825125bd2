"""The committed leaderboard: every committed entry verifies and the committed board is current (the suite's
costliest single test, in its own file so pytest-xdist's loadfile can run it beside the other leaderboard files)."""

import shutil
from pathlib import Path

from oodml.leaderboard import build, iter_entries, verify

REPO = Path(__file__).resolve().parents[1]


def test_committed_entries_verify_and_the_committed_board_is_current(glyphs, tmp_path):
    """CI re-scores every committed entry, and the committed board is exactly what they produce."""
    root = REPO / "leaderboard"
    entries = iter_entries(root)
    assert entries, "the glyphs baselines should be committed under leaderboard/submissions/"
    results = [verify(path, dataset=glyphs) for path in entries]
    assert [str(r.path) for r in results if not r.ok] == []
    shutil.copytree(root, tmp_path / "board", ignore=shutil.ignore_patterns("submissions"))
    (tmp_path / "board" / "submissions").symlink_to(root / "submissions")
    build(tmp_path / "board", verifications=results)
    for name in ("README.md", "index.html"):
        assert (tmp_path / "board" / name).read_text() == (root / name).read_text(), \
            f"leaderboard/{name} is stale: run `oodml leaderboard build`"
    sizes = sum(f.stat().st_size for f in (root / "submissions" / "glyphs").rglob("*") if f.is_file())
    assert sizes < 30e6

